"""The SLO's pure functions: recording rules, burn-rate alerts (checked by promtool), Grafana."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess

import pytest
import yaml
from cr_samples import by, sample, spec_of

from pimlab_operator.schema import duration_seconds
from pimlab_operator.slo import desired as slo
from pimlab_operator.slo import status as slo_status
from pimlab_operator.slo.model import SLOSpec

AVAILABILITY = sample("SLO", "encounter-booking-availability")
LATENCY = sample("SLO", "encounter-booking-latency")


def alerts_of(children: list[dict], name: str) -> list[dict]:
    groups = by(children, "PrometheusRule", name)["spec"]["groups"]
    return [r for g in groups for r in g["rules"] if "alert" in r]


def test_children_names_owner_and_dashboard_label():
    children = slo.desired_children(AVAILABILITY, spec_of(AVAILABILITY), with_prometheus_rule=True)
    name = "encounter-booking-availability"
    assert [(c["kind"], c["metadata"]["name"]) for c in children] == [
        ("PrometheusRule", name), ("ConfigMap", f"{name}-grafana-alerts"), ("ConfigMap", f"{name}-dashboard")]
    for child in children:
        assert child["metadata"]["ownerReferences"][0]["kind"] == "SLO"
        assert child["metadata"]["ownerReferences"][0]["uid"] == f"uid-{name}"
    dashboard = by(children, "ConfigMap", f"{name}-dashboard")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    body = json.loads(dashboard["data"][f"{name}.json"])
    assert body["uid"] and body["schemaVersion"] >= 36 and len(body["panels"]) == 3


def test_no_prometheus_rule_without_its_crd_and_status_says_so():
    children = slo.desired_children(AVAILABILITY, spec_of(AVAILABILITY), with_prometheus_rule=False)
    assert "PrometheusRule" not in {c["kind"] for c in children}
    status, conditions = slo_status.slo_status(AVAILABILITY, children, with_prometheus_rule=False)
    assert status.phase == "Degraded" and conditions[0].reason == "PrometheusRuleCRDMissing"
    assert [o.kind for o in status.generated_objects] == ["ConfigMap", "ConfigMap"]


def test_recording_rules_cover_every_window_with_the_placeholder_replaced():
    rules = slo.recording_rules(AVAILABILITY, spec_of(AVAILABILITY))
    recorded = [r["record"] for r in rules]
    for window in ("5m", "30m", "1h", "2h", "6h", "1d", "3d"):
        assert f"slo:sli_error:ratio_rate{window}" in recorded
    five = next(r for r in rules if r["record"] == "slo:sli_error:ratio_rate5m")
    assert "{{window}}" not in five["expr"] and "[5m]" in five["expr"]
    assert five["labels"] == {"slo": "encounter-booking-availability", "slo_namespace": "lab",
                              "service": "encounter", "journey": "bookEncounter"}


def test_burn_rate_thresholds_windows_and_severities():
    alerts = slo.burn_alerts(AVAILABILITY, spec_of(AVAILABILITY))  # objective 99.9: budget 0.001
    table = [(a["labels"]["long_window"], a["labels"]["short_window"], a["threshold"], a["labels"]["severity"],
              a["for"]) for a in alerts]
    assert table == [("1h", "5m", "0.0144", "page", "2m"), ("6h", "30m", "0.006", "page", "2m"),
                     ("1d", "2h", "0.003", "ticket", "15m"), ("3d", "6h", "0.001", "ticket", "15m")]
    first = alerts[0]
    assert "slo:sli_error:ratio_rate1h{" in first["expr"] and "slo:sli_error:ratio_rate5m{" in first["expr"]
    assert first["annotations"]["runbook_url"].endswith("05_encounter-write.md")


def test_disabled_ticket_alerts_are_not_generated_and_labels_come_from_the_spec():
    body = copy.deepcopy(AVAILABILITY)
    body["spec"]["alerting"]["ticket"]["enabled"] = False
    body["spec"]["alerting"]["page"]["labels"] = {"severity": "critical", "team": "sre"}
    alerts = slo.burn_alerts(body, spec_of(body))
    assert len(alerts) == 2
    assert alerts[0]["labels"]["severity"] == "critical" and alerts[0]["labels"]["team"] == "sre"


def test_latency_sli_uses_the_threshold_bucket():
    query = slo.error_ratio_query(SLOSpec.model_validate(LATENCY["spec"]), "1h")
    assert 'pim_http_request_duration_seconds_bucket{route="/encounters",method="POST",le="0.3"}[1h]' in query
    assert 'pim_http_request_duration_seconds_count{route="/encounters",method="POST"}[1h]' in query
    kpi = sample("SLO", "kpi-read-latency")
    assert 'le="1.0"' in slo.error_ratio_query(SLOSpec.model_validate(kpi["spec"]), "5m")


def test_latency_thresholds_of_the_samples_are_bucket_bounds_of_the_services():
    from api_services.telemetry import LATENCY_BUCKETS

    bounds = {slo.le_label(b) for b in LATENCY_BUCKETS}
    for body in sample("SLO"):
        latency = body["spec"]["sli"].get("latency")
        if latency:
            assert slo.le_label(duration_seconds(latency["threshold"])) in bounds


def test_grafana_provisioning_is_apiversion_1_with_unique_uids():
    children = slo.desired_children(AVAILABILITY, spec_of(AVAILABILITY), True)
    config = by(children, "ConfigMap", "encounter-booking-availability-grafana-alerts")
    provisioning = yaml.safe_load(config["data"]["encounter-booking-availability-alerts.yaml"])
    assert provisioning["apiVersion"] == 1
    rules = provisioning["groups"][0]["rules"]
    assert len(rules) == 4 and len({r["uid"] for r in rules}) == 4
    assert all(len(r["uid"]) <= 40 and r["condition"] == "C" for r in rules)
    assert rules[0]["data"][0]["relativeTimeRange"]["from"] == 3600
    assert "> 0.0144" in rules[0]["data"][0]["model"]["expr"]


@pytest.mark.parametrize("body", sample("SLO"), ids=lambda b: b["metadata"]["name"])
def test_every_sample_rule_file_passes_promtool(body, tmp_path):
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian's prometheus package provides it)")
    rule = by(slo.desired_children(body, spec_of(body), True), "PrometheusRule", body["metadata"]["name"])
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text(yaml.safe_dump(rule["spec"]))
    grafana = [{"record": "grafana:query", "expr": r["expr"]} for r in slo.grafana_rules(body, spec_of(body))]
    grafana_file = tmp_path / "grafana.yaml"
    grafana_file.write_text(yaml.safe_dump({"groups": [{"name": "grafana", "rules": grafana}]}))
    proc = subprocess.run([promtool, "check", "rules", str(rules_file), str(grafana_file)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_page_alert_fires_on_a_fast_burn_with_promtool(tmp_path):
    """promtool test rules: 2% errors (20x a 0.1% budget) for 2h pages; no errors do not."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian's prometheus package provides it)")
    rule = by(slo.desired_children(AVAILABILITY, spec_of(AVAILABILITY), True), "PrometheusRule", "encounter-booking-availability")
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rule["spec"]))
    total = 'pim_http_requests_total{route="/encounters",method="POST",status="201"}'
    errors = 'pim_http_requests_total{route="/encounters",method="POST",status="503"}'
    tests = {"rule_files": ["rules.yaml"], "evaluation_interval": "1m", "tests": [{
        "interval": "1m",
        "input_series": [{"series": total, "values": "0+98x180"}, {"series": errors, "values": "0+2x180"}],
        "alert_rule_test": [
            {"eval_time": "2h", "alertname": "SLOErrorBudgetBurnPage", "exp_alerts": [
                {"exp_labels": {**a["labels"]}, "exp_annotations": a["annotations"]}
                for a in slo.burn_alerts(AVAILABILITY, spec_of(AVAILABILITY)) if a["labels"]["long_window"] in ("1h", "6h")]},
            {"eval_time": "2h", "alertname": "SLOErrorBudgetBurnTicket", "exp_alerts": [
                {"exp_labels": {**a["labels"]}, "exp_annotations": a["annotations"]}
                for a in slo.burn_alerts(AVAILABILITY, spec_of(AVAILABILITY)) if a["labels"]["long_window"] in ("1d", "3d")]},
        ]}, {
        "interval": "1m",
        "input_series": [{"series": total, "values": "0+100x180"}, {"series": errors, "values": "0+0x180"}],
        "alert_rule_test": [{"eval_time": "2h", "alertname": "SLOErrorBudgetBurnPage", "exp_alerts": []}],
    }]}
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump(tests))
    proc = subprocess.run([promtool, "test", "rules", "tests.yaml"], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# ---- alerting options ------------------------------------------------------------------------

def _with_alerting(**alerting) -> dict:
    body = copy.deepcopy(AVAILABILITY)
    body["spec"]["alerting"] = {**body["spec"]["alerting"], **alerting}
    return body


def test_workbook_tiers_are_the_default():
    body = copy.deepcopy(AVAILABILITY)
    body["spec"]["alerting"] = {}
    table = [(t["severity"], t["long"], t["short"], t["factor"], t["for"]) for t in slo.tiers(spec_of(body))]
    assert table == [("page", "1h", "5m", 14.4, "2m"), ("page", "6h", "30m", 6.0, "2m"),
                     ("ticket", "1d", "2h", 3.0, "15m"), ("ticket", "3d", "6h", 1.0, "15m")]


def test_tiers_are_configurable_and_individually_disableable():
    body = _with_alerting(page={"for": "1m", "labels": {"severity": "critical"}, "tiers": [
        {"longWindow": "1h", "shortWindow": "5m", "burnRate": 10, "for": "30s", "labels": {"team": "booking"}},
        {"longWindow": "6h", "shortWindow": "30m", "burnRate": 6, "enabled": False},
        {"longWindow": "2h", "shortWindow": "10m", "burnRate": 8}]})
    spec = spec_of(body)
    alerts = [a for a in slo.burn_alerts(body, spec) if a["severity"] == "page"]
    assert [(a["labels"]["long_window"], a["labels"]["short_window"], a["threshold"], a["for"]) for a in alerts] == [
        ("1h", "5m", "0.01", "30s"), ("2h", "10m", "0.008", "1m")]
    assert alerts[0]["labels"]["team"] == "booking" and alerts[0]["labels"]["severity"] == "critical"
    assert "team" not in alerts[1]["labels"]
    recorded = [r["record"] for r in slo.recording_rules(body, spec)]
    assert "slo:sli_error:ratio_rate10m" in recorded and "slo:sli_error:ratio_rate2h" in recorded
    assert slo.alert_windows(spec) == ["5m", "10m", "1h", "2h", "6h", "1d", "3d"]


@pytest.mark.parametrize("bad, message", [
    ({"page": {"tiers": [{"longWindow": "5m", "shortWindow": "1h", "burnRate": 14.4}]}}, "shorter than longWindow"),
    ({"page": {"tiers": [{"longWindow": "1h", "shortWindow": "5m", "burnRate": 14.4},
                         {"longWindow": "1h", "shortWindow": "5m", "burnRate": 10}]}}, "same longWindow"),
    ({"page": {"tiers": [{"longWindow": "1h", "shortWindow": "5m", "burnRate": 0}]}}, "greater than 0"),
])
def test_bad_tiers_are_refused(bad, message):
    with pytest.raises(ValueError, match=message):
        spec_of(_with_alerting(**bad))


@pytest.mark.parametrize("objective", [100, 100.0, 0, 120])
def test_objective_of_100_is_refused(objective):
    body = copy.deepcopy(AVAILABILITY)
    body["spec"]["objective"] = objective
    with pytest.raises(ValueError, match="objective"):
        spec_of(body)


def test_absent_alert_is_optional():
    assert not [a for a in slo.rule_groups(AVAILABILITY, spec_of(AVAILABILITY))[-1]["rules"]
                if a.get("alert") == slo.ABSENT_ALERT]
    body = _with_alerting(absent={"enabled": True, "for": "5m"})
    (absent,) = slo.absent_alert(body, spec_of(body))
    assert absent["expr"].startswith("absent(sum(rate(pim_http_requests_total{route=\"/encounters\"")
    assert absent["for"] == "5m" and absent["labels"]["severity"] == "ticket"
    latency = copy.deepcopy(LATENCY)
    latency["spec"]["alerting"]["absent"] = {"enabled": True}
    (absent,) = slo.absent_alert(latency, spec_of(latency))
    assert absent["expr"] == 'absent(pim_http_request_duration_seconds_count{route="/encounters",method="POST"})'


def _promtool_test(tmp_path, body: dict, tests: list[dict]) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian's prometheus package provides it)")
    rule = by(slo.desired_children(body, spec_of(body), True), "PrometheusRule", body["metadata"]["name"])
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rule["spec"]))
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump(
        {"rule_files": ["rules.yaml"], "evaluation_interval": "1m", "tests": tests}))
    proc = subprocess.run([promtool, "test", "rules", "tests.yaml"], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("name", ["encounter-booking-availability", "encounter-booking-latency"])
def test_zero_traffic_never_fires_and_records_no_nan(tmp_path, name):
    """Counters that exist but do not move (and no error series at all): every window's ratio
    and the budget have no sample -- never NaN or +Inf -- and no burn alert fires."""
    body = copy.deepcopy(sample("SLO", name))
    body["spec"]["alerting"]["absent"] = {"enabled": True, "for": "5m"}
    if "latency" in body["spec"]["sli"]:
        base = 'pim_http_request_duration_seconds{route="/encounters",method="POST",status="201"'
        inputs = [{"series": f"{base[:33]}_count{base[33:]}}}", "values": "5+0x300"},
                  {"series": f"{base[:33]}_bucket{base[33:]},le=\"0.3\"}}", "values": "5+0x300"}]
    else:
        inputs = [{"series": 'pim_http_requests_total{route="/encounters",method="POST",status="201"}',
                   "values": "5+0x300"}]
    sel = f'{{slo="{name}",slo_namespace="lab"}}'
    _promtool_test(tmp_path, body, [{
        "interval": "1m", "input_series": inputs,
        "promql_expr_test": [{"expr": f"{slo.series(w)}{sel}", "eval_time": "4h", "exp_samples": []}
                             for w in ("5m", "1h", "6h", "30d")]
        + [{"expr": f"slo:error_budget:remaining_ratio{sel}", "eval_time": "4h", "exp_samples": []}],
        "alert_rule_test": [{"eval_time": "4h", "alertname": a, "exp_alerts": []}
                            for a in ("SLOErrorBudgetBurnPage", "SLOErrorBudgetBurnTicket", slo.ABSENT_ALERT)],
    }])


def test_absent_alert_fires_only_when_the_metric_is_missing(tmp_path):
    body = _with_alerting(absent={"enabled": True, "for": "5m"})
    ident = slo.identity(body, spec_of(body))
    _promtool_test(tmp_path, body, [
        {"interval": "1m", "input_series": [{"series": 'other_metric{job="x"}', "values": "0+1x30"}],
         "alert_rule_test": [{"eval_time": "20m", "alertname": slo.ABSENT_ALERT, "exp_alerts": [
             {"exp_labels": {**ident, "severity": "ticket"},
              "exp_annotations": slo.absent_alert(body, spec_of(body))[0]["annotations"]}]}]},
        {"interval": "1m", "input_series": [
            {"series": 'pim_http_requests_total{route="/encounters",method="POST",status="201"}', "values": "0+0x30"}],
         "alert_rule_test": [{"eval_time": "20m", "alertname": slo.ABSENT_ALERT, "exp_alerts": []}]},
    ])


def test_budget_is_whole_without_errors_and_page_fires_with_no_error_series(tmp_path):
    """Traffic without a single 5xx series: the ratio is 0 (not empty), the budget 1."""
    sel = '{slo="encounter-booking-availability",slo_namespace="lab"}'
    labels = 'slo="encounter-booking-availability",slo_namespace="lab",service="encounter",journey="bookEncounter"'
    _promtool_test(tmp_path, AVAILABILITY, [{
        "interval": "1m",
        "input_series": [{"series": 'pim_http_requests_total{route="/encounters",method="POST",status="201"}',
                          "values": "0+60x120"}],
        "promql_expr_test": [
            {"expr": f"slo:sli_error:ratio_rate1h{sel}", "eval_time": "90m",
             "exp_samples": [{"labels": f"slo:sli_error:ratio_rate1h{{{labels}}}", "value": 0}]},
            {"expr": f"slo:error_budget:remaining_ratio{sel}", "eval_time": "90m",
             "exp_samples": [{"labels": f"slo:error_budget:remaining_ratio{{{labels}}}", "value": 1}]}],
        "alert_rule_test": [{"eval_time": "90m", "alertname": "SLOErrorBudgetBurnPage", "exp_alerts": []}],
    }])


# ---- the error budget in status ---------------------------------------------------------------

def _reading(series: dict, alerts: list | None = None) -> dict:
    import datetime as dt

    return {"series": series, "alerts": alerts or [],
            "readAt": dt.datetime(2026, 11, 30, 12, 0, tzinfo=dt.timezone.utc)}


def test_budget_status_from_a_reading():
    spec = spec_of(AVAILABILITY)  # 99.9% over 30d: 43.2 minutes of budget
    reading = _reading(
        {"slo:sli_error:ratio_rate5m": 0.02, "slo:sli_error:ratio_rate1h": 0.0144, "slo:sli_error:ratio_rate6h": 0.0003,
         "slo:sli_error:ratio_rate30d": 0.0002, "slo:error_budget:remaining_ratio": 0.8},
        [{"state": "firing", "activeAt": "2026-11-30T11:58:00.123Z",
          "labels": {"alertname": "SLOErrorBudgetBurnPage", "severity": "page", "long_window": "1h",
                     "short_window": "5m", "slo": "encounter-booking-availability", "slo_namespace": "lab"}},
         {"state": "pending", "labels": {"alertname": "SLOErrorBudgetBurnTicket"}}])
    budget, condition = slo_status.budget_status(AVAILABILITY, spec, reading, "http://127.0.0.1:9090")
    budget = budget.to_k8s()  # as written
    assert budget["sli"] == pytest.approx(0.9998) and budget["remaining"] == 0.8
    assert budget["remainingMinutes"] == pytest.approx(0.8 * 43.2)
    assert budget["burnRate1h"] == pytest.approx(14.4) and budget["burnRate6h"] == pytest.approx(0.3)
    assert budget["worstBurnRate"] == pytest.approx(20) and budget["worstBurnWindow"] == "5m"
    assert {b["window"] for b in budget["burnRates"]} == {"5m", "30m", "1h", "2h", "6h", "1d", "3d"}
    assert all(b["readAt"] == "2026-11-30T12:00:00Z" for b in budget["burnRates"])
    assert "value" not in next(b for b in budget["burnRates"] if b["window"] == "3d")
    assert budget["firingAlerts"] == [{"alert": "SLOErrorBudgetBurnPage", "severity": "page", "longWindow": "1h",
                                       "shortWindow": "5m", "activeSince": "2026-11-30T11:58:00Z"}]
    assert budget["evaluatedAt"] == "2026-11-30T12:00:00Z"
    assert condition.status and condition.reason == "Read" and "SLOErrorBudgetBurnPage" in condition.message


def test_no_data_is_said_not_invented():
    budget, condition = slo_status.budget_status(AVAILABILITY, spec_of(AVAILABILITY), _reading({}), "http://p:9090")
    assert budget.remaining is None and budget.worst_burn_rate is None
    assert condition.reason == "NoData"


def test_unreadable_prometheus_clears_the_figures_and_keeps_the_last_as_last():
    from pimlab_operator.conditions import Condition

    body = copy.deepcopy(AVAILABILITY)
    body["status"] = {"errorBudget": {"remaining": 0.8, "evaluatedAt": "2026-11-30T12:00:00Z"}}
    children = slo.desired_children(body, spec_of(body), True)
    down = (None, Condition("BudgetCurrent", False, "PrometheusUnreachable", "http://p:9090: refused"))
    status, conditions = slo_status.slo_status(body, children, True, down)
    written = status.to_k8s()
    assert "errorBudget" not in written
    assert written["lastErrorBudget"] == {"remaining": 0.8, "evaluatedAt": "2026-11-30T12:00:00Z"}
    assert status.phase == "Degraded"
    assert [(c.type, c.status, c.reason) for c in conditions] == [
        ("Ready", True, "RulesGenerated"), ("Degraded", True, "PrometheusUnreachable"),
        ("BudgetCurrent", False, "PrometheusUnreachable")]
    status, conditions = slo_status.slo_status(body, children, True, None)
    assert status.phase == "Ready" and conditions[2].reason == "NoPrometheusUrl"

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
    status, conditions = slo.slo_status(AVAILABILITY, children, with_prometheus_rule=False)
    assert status["phase"] == "Degraded" and conditions[0].reason == "PrometheusRuleCRDMissing"
    assert [o["kind"] for o in status["generatedObjects"]] == ["ConfigMap", "ConfigMap"]


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

"""What an SLO should be: recording rules, multi-window multi-burn-rate alerts (the Google SRE
workbook's table), Grafana alert provisioning and a dashboard, computed purely from the spec.

Queries are finished here with `str.replace`, because the users' `{{window}}` placeholder is
also jinja syntax; the templates only lay finished strings out.
"""

from __future__ import annotations

import hashlib
import json

from pimlab_operator.schema import duration_seconds
from pimlab_operator.slo.model import WINDOW_PLACEHOLDER, SLOSpec
from pimlab_operator.conditions import Condition
from pimlab_operator.render import owned, render

WINDOWS = ("5m", "30m", "1h", "2h", "6h", "1d", "3d")
#: (severity, long window, short window, burn-rate factor): a factor of 14.4 spends 2% of a
#: 30-day budget in one hour.
BURN_ALERTS = (
    ("page", "1h", "5m", 14.4),
    ("page", "6h", "30m", 6.0),
    ("ticket", "1d", "2h", 3.0),
    ("ticket", "3d", "6h", 1.0),
)
DEFAULT_FOR = {"page": "2m", "ticket": "15m"}
DATASOURCE_UID = "prometheus"


def number(value: float) -> str:
    """A float as PromQL text without binary noise: 14.4 * 0.001 -> 0.0144."""
    return format(round(value, 12), ".12g")


def le_label(seconds: float) -> str:
    """A bucket bound as Prometheus clients and Prometheus 3 write `le`: 0.3, 1.0, 2.5."""
    return repr(float(seconds))


def error_ratio_query(spec: SLOSpec, window: str) -> str:
    """The SLI's error ratio (0..1) over `window`, as PromQL."""
    sli = spec.sli
    if sli.ratio:
        errors = sli.ratio.errors.replace(WINDOW_PLACEHOLDER, window)
        total = sli.ratio.total.replace(WINDOW_PLACEHOLDER, window)
        return f"({errors})\n/\n({total})"
    if sli.raw:
        return sli.raw.error_ratio.replace(WINDOW_PLACEHOLDER, window)
    latency = sli.latency
    matchers = latency.selector or ""
    bucket = ",".join(m for m in (matchers, f'le="{le_label(duration_seconds(latency.threshold))}"') if m)
    total = f"sum(rate({latency.metric}_count{{{matchers}}}[{window}]))"
    good = f"sum(rate({latency.metric}_bucket{{{bucket}}}[{window}]))"
    return f"({total} - {good})\n/\n{total}"


def identity(slo: dict) -> dict[str, str]:
    """Labels every series and alert of this SLO carries."""
    spec = slo["spec"]
    found = {"slo": slo["metadata"]["name"], "slo_namespace": slo["metadata"]["namespace"],
             "service": spec["service"]}
    if spec.get("journey"):
        found["journey"] = spec["journey"]
    return found


def series(window: str) -> str:
    return f"slo:sli_error:ratio_rate{window}"


def selector_of(labels: dict[str, str]) -> str:
    return "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}"


def recording_rules(slo: dict, spec: SLOSpec) -> list[dict]:
    """One error-ratio series per window, the compliance-window ratio and the budget left."""
    labels = identity(slo)
    sel = selector_of({"slo": labels["slo"], "slo_namespace": labels["slo_namespace"]})
    budget = number(1 - spec.objective / 100)
    rules = [{"record": series(w), "expr": error_ratio_query(spec, w), "labels": labels} for w in WINDOWS]
    rules.append({"record": series(spec.window),
                  "expr": f"avg_over_time({series('5m')}{sel}[{spec.window}])", "labels": labels})
    rules.append({"record": "slo:error_budget:remaining_ratio",
                  "expr": f"1 - {series(spec.window)}{sel} / {budget}", "labels": labels})
    return rules


def burn_alerts(slo: dict, spec: SLOSpec) -> list[dict]:
    """Multi-window multi-burn-rate alerts: both windows must burn faster than `factor`, so an
    alert fires fast on a real burn and resets fast once it stops."""
    ident = identity(slo)
    sel = selector_of({"slo": ident["slo"], "slo_namespace": ident["slo_namespace"]})
    budget = 1 - spec.objective / 100
    alerts = []
    for severity, long, short, factor in BURN_ALERTS:
        policy = getattr(spec.alerting, severity)
        if not policy.enabled:
            continue
        threshold = number(factor * budget)
        name = "SLOErrorBudgetBurn" + ("Page" if severity == "page" else "Ticket")
        annotations = {
            "summary": f"{ident['slo']}: error budget burning {number(factor)}x too fast ({long}/{short})",
            "description": (f"{spec.service}{'/' + spec.journey if spec.journey else ''}: error ratio over "
                            f"{long} and {short} is above {threshold} ({number(factor)}x the budget of "
                            f"{number(budget)} for objective {number(spec.objective)}% over {spec.window})."),
        }
        if spec.alerting.runbook_url:
            annotations["runbook_url"] = spec.alerting.runbook_url
        alerts.append({
            "alert": name,
            "expr": f"({series(long)}{sel} > {threshold})\nand\n({series(short)}{sel} > {threshold})",
            "for": policy.for_ or DEFAULT_FOR[severity],
            "labels": {**ident, **(policy.labels or {"severity": severity}),
                       "long_window": long, "short_window": short, "burn_factor": number(factor)},
            "annotations": annotations,
            "severity": severity,
            "threshold": threshold,
        })
    return alerts


def rule_groups(slo: dict, spec: SLOSpec) -> list[dict]:
    """The PrometheusRule's `spec.groups`, also what `promtool check rules` reads."""
    name = slo["metadata"]["name"]
    alerts = [{k: v for k, v in a.items() if k not in ("severity", "threshold")}
              for a in burn_alerts(slo, spec)]
    groups = [{"name": f"slo-{name}-recordings", "interval": "30s", "rules": recording_rules(slo, spec)}]
    if alerts:
        groups.append({"name": f"slo-{name}-alerts", "rules": alerts})
    return groups


def _uid(*parts: str) -> str:
    """Grafana uids are at most 40 characters: a stable hash of what identifies the object."""
    return hashlib.sha256("/".join(parts).encode()).hexdigest()[:24]


def grafana_rules(slo: dict, spec: SLOSpec) -> list[dict]:
    """Grafana-managed alert rules mirroring the burn-rate alerts. They query the SLI itself
    (not our recording rules), so they work where no prometheus-operator runs."""
    ns, name = slo["metadata"]["namespace"], slo["metadata"]["name"]
    rules = []
    for alert in burn_alerts(slo, spec):
        labels = alert["labels"]
        long, short, threshold = labels["long_window"], labels["short_window"], alert["threshold"]
        expr = (f"(\n{error_ratio_query(spec, long)}\n) > {threshold}\nand\n"
                f"(\n{error_ratio_query(spec, short)}\n) > {threshold}")
        rules.append({
            "uid": _uid(ns, name, long, short),
            "title": f"{name} {alert['severity']} burn {long}/{short}",
            "expr": expr, "for": alert["for"], "labels": labels,
            "annotations": alert["annotations"], "lookback": int(duration_seconds(long)),
        })
    return rules


def dashboard(slo: dict, spec: SLOSpec) -> dict:
    """A small Grafana dashboard: budget left, burn rates per window, the SLI over time."""
    ident = identity(slo)
    sel = selector_of({"slo": ident["slo"], "slo_namespace": ident["slo_namespace"]})
    budget = number(1 - spec.objective / 100)
    ds = {"type": "prometheus", "uid": DATASOURCE_UID}
    panels = [
        {"id": 1, "type": "stat", "title": "Error budget remaining", "datasource": ds,
         "gridPos": {"x": 0, "y": 0, "w": 6, "h": 6},
         "fieldConfig": {"defaults": {"unit": "percentunit"}, "overrides": []},
         "targets": [{"refId": "A", "expr": f"slo:error_budget:remaining_ratio{sel}"}]},
        {"id": 2, "type": "timeseries", "title": "Burn rate by window (1 = on budget)", "datasource": ds,
         "gridPos": {"x": 6, "y": 0, "w": 18, "h": 6},
         "fieldConfig": {"defaults": {"unit": "none"}, "overrides": []},
         "targets": [{"refId": chr(65 + i), "legendFormat": w, "expr": f"{series(w)}{sel} / {budget}"}
                     for i, w in enumerate(WINDOWS)]},
        {"id": 3, "type": "timeseries", "title": "SLI error ratio (5m) vs. budget", "datasource": ds,
         "gridPos": {"x": 0, "y": 6, "w": 24, "h": 8},
         "fieldConfig": {"defaults": {"unit": "percentunit"}, "overrides": []},
         "targets": [{"refId": "A", "legendFormat": "error ratio", "expr": f"{series('5m')}{sel}"},
                     {"refId": "B", "legendFormat": "budget", "expr": f"vector({budget})"}]},
    ]
    return {
        "uid": _uid("dashboard", ident["slo_namespace"], ident["slo"]),
        "title": f"SLO {ident['slo']} ({number(spec.objective)}% over {spec.window})",
        "description": spec.description or "",
        "tags": ["slo", "pim-sre-lab", spec.service],
        "schemaVersion": 39, "version": 1, "editable": False, "time": {"from": "now-6h", "to": "now"},
        "templating": {"list": []}, "panels": panels,
    }


def desired_children(slo: dict, spec: SLOSpec, with_prometheus_rule: bool) -> list[dict]:
    """Every child of the SLO; a PrometheusRule only where its CRD exists."""
    name = slo["metadata"]["name"]
    labels = {"app.kubernetes.io/name": "pim-slo", "app.kubernetes.io/instance": name,
              "app.kubernetes.io/part-of": "pim-sre-lab"}
    children = []
    if with_prometheus_rule:
        children += render("slo/prometheusrule.yaml.j2", name=name, labels=labels, groups=rule_groups(slo, spec))
    folder = spec.grafana.folder
    children += render("slo/grafana-alerts.yaml.j2", name=name, labels=labels, folder=folder,
                       rules=grafana_rules(slo, spec), datasource_uid=DATASOURCE_UID)
    if spec.grafana.dashboard:
        children += render("slo/dashboard.yaml.j2", name=name, labels=labels, folder=folder,
                           dashboard=json.dumps(dashboard(slo, spec), indent=2, sort_keys=True))
    return owned(children, slo)


def slo_status(slo: dict, children: list[dict], with_prometheus_rule: bool) -> tuple[dict, list[Condition]]:
    """Generated objects and conditions. The error budget is not read yet (querying the Lab's
    Prometheus is a later issue), so errorBudget stays unset and the message says why."""
    generated = [{"apiVersion": c["apiVersion"], "kind": c["kind"], "name": c["metadata"]["name"],
                  "namespace": c["metadata"]["namespace"]} for c in children]
    budget_note = "error budget not read: querying Prometheus is not implemented yet"
    if with_prometheus_rule:
        phase, ready = "Ready", Condition(
            "Ready", True, "RulesGenerated",
            f"{len(generated)} objects generated (PrometheusRule, Grafana alerts"
            f"{', dashboard' if len(generated) > 2 else ''}); {budget_note}")
        degraded = Condition("Degraded", False, "AllTargetsPresent", "the PrometheusRule CRD exists")
    else:
        phase = "Degraded"
        ready = Condition("Ready", False, "PrometheusRuleCRDMissing",
                          "monitoring.coreos.com/v1 PrometheusRule is not installed: no recording rules or "
                          f"Prometheus alerts; burn-rate alerts exist only as Grafana alert rules; {budget_note}")
        degraded = Condition("Degraded", True, "PrometheusRuleCRDMissing", ready.message)
    return ({"phase": phase, "phaseReason": ready.message, "generatedObjects": generated},
            [ready, degraded])

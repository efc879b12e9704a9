"""What an SLO should have: recording rules, multi-window multi-burn-rate alerts (the Google SRE
workbook's table), Grafana alert provisioning and a dashboard, computed purely from the spec.
What its budget reads is in `status.py`.

Queries are finished here with `str.replace`, because the users' `{{window}}` placeholder is
also jinja syntax; the templates only lay finished strings out.
"""

from __future__ import annotations

import hashlib
import json

from pimlab_operator.schema import duration_seconds
from pimlab_operator.render import owned, render
from pimlab_operator.slo.model import DEFAULT_FOR, WINDOW_PLACEHOLDER, WORKBOOK_TIERS, SLOSpec

#: Windows recorded for every SLO (the workbook's); tiers may add their own.
WINDOWS = ("5m", "30m", "1h", "2h", "6h", "1d", "3d")
SEVERITIES = ("page", "ticket")
DATASOURCE_UID = "prometheus"
ALERT_NAMES = {"page": "SLOErrorBudgetBurnPage", "ticket": "SLOErrorBudgetBurnTicket"}
ABSENT_ALERT = "SLOMetricAbsent"


def tiers(spec: SLOSpec) -> list[dict]:
    """The enabled burn-rate tiers, each with its severity, windows, factor, `for` and labels:
    the spec's tiers where given, the Google SRE Workbook's otherwise."""
    found = []
    for severity in SEVERITIES:
        policy = getattr(spec.alerting, severity)
        if not policy.enabled:
            continue
        if policy.tiers is None:
            chosen = [{"long": t["longWindow"], "short": t["shortWindow"], "factor": t["burnRate"],
                       "for": None, "labels": {}} for t in WORKBOOK_TIERS[severity]]
        else:
            chosen = [{"long": t.long_window, "short": t.short_window, "factor": t.burn_rate,
                       "for": t.for_, "labels": t.labels or {}} for t in policy.tiers if t.enabled]
        for tier in chosen:
            found.append({**tier, "severity": severity,
                          "for": tier["for"] or policy.for_ or DEFAULT_FOR[severity],
                          "labels": {**(policy.labels or {"severity": severity}), **tier["labels"]}})
    return found


def windows(spec: SLOSpec) -> list[str]:
    """Every window that gets a recording rule, shortest first."""
    used = set(WINDOWS) | {w for t in tiers(spec) for w in (t["long"], t["short"])}
    return sorted(used, key=duration_seconds)


def alert_windows(spec: SLOSpec) -> list[str]:
    """The windows the enabled tiers look at (the status shows a burn rate for each)."""
    used = {w for t in tiers(spec) for w in (t["long"], t["short"])} or {"1h", "6h"}
    return sorted(used, key=duration_seconds)


def number(value: float) -> str:
    """A float as PromQL text without binary noise: 14.4 * 0.001 -> 0.0144."""
    return format(round(value, 12), ".12g")


def le_label(seconds: float) -> str:
    """A bucket bound as Prometheus clients and Prometheus 3 write `le`: 0.3, 1.0, 2.5."""
    return repr(float(seconds))


def event_rate_queries(spec: SLOSpec, window: str) -> tuple[str, str] | None:
    """(bad events per second, all events per second) over `window`, as PromQL; None for a raw
    SLI, which gives only a ratio."""
    sli = spec.sli
    if sli.ratio:
        return (sli.ratio.errors.replace(WINDOW_PLACEHOLDER, window),
                sli.ratio.total.replace(WINDOW_PLACEHOLDER, window))
    if sli.raw:
        return None
    latency = sli.latency
    matchers = latency.selector or ""
    bucket = ",".join(m for m in (matchers, f'le="{le_label(duration_seconds(latency.threshold))}"') if m)
    total = f"sum(rate({latency.metric}_count{{{matchers}}}[{window}]))"
    good = f"sum(rate({latency.metric}_bucket{{{bucket}}}[{window}]))"
    return f"{total} - {good}", total


def error_ratio_query(spec: SLOSpec, window: str) -> str:
    """The SLI's error ratio (0..1) over `window`, as PromQL that never yields NaN or +Inf: a
    window without traffic gives no sample at all (the denominator is kept only where it is
    above zero), and no error series at all counts as zero errors."""
    sli = spec.sli
    if sli.raw:
        return f"clamp_max(({sli.raw.error_ratio.replace(WINDOW_PLACEHOLDER, window)}) >= 0, 1)"
    bad, total = event_rate_queries(spec, window)
    if sli.ratio:
        return f"(({bad}) or on() vector(0))\n/\n(({total}) > 0)"
    return f"({bad})\n/\n({total} > 0)"


def presence_query(spec: SLOSpec) -> str:
    """An expression that is empty exactly when the SLI's metric is missing (zero traffic on an
    existing counter is not missing)."""
    sli = spec.sli
    if sli.ratio:
        return sli.ratio.total.replace(WINDOW_PLACEHOLDER, "5m")
    if sli.raw:
        return sli.raw.error_ratio.replace(WINDOW_PLACEHOLDER, "5m")
    return f"{sli.latency.metric}_count{{{sli.latency.selector or ''}}}"


def identity(slo: dict, spec: SLOSpec) -> dict[str, str]:
    """Labels every series and alert of this SLO carries."""
    found = {"slo": slo["metadata"]["name"], "slo_namespace": slo["metadata"]["namespace"],
             "service": spec.service}
    if spec.journey:
        found["journey"] = spec.journey
    return found


def series(window: str) -> str:
    return f"slo:sli_error:ratio_rate{window}"


def selector_of(labels: dict[str, str]) -> str:
    return "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}"


def recording_rules(slo: dict, spec: SLOSpec) -> list[dict]:
    """One error-ratio series per window, the compliance-window ratio and the budget left."""
    labels = identity(slo, spec)
    sel = selector_of({"slo": labels["slo"], "slo_namespace": labels["slo_namespace"]})
    budget = number(1 - spec.objective / 100)
    rules = [{"record": series(w), "expr": error_ratio_query(spec, w), "labels": labels} for w in windows(spec)]
    rules.append({"record": series(spec.window),
                  "expr": f"avg_over_time({series('5m')}{sel}[{spec.window}])", "labels": labels})
    rules.append({"record": "slo:error_budget:remaining_ratio",
                  "expr": f"1 - {series(spec.window)}{sel} / {budget}", "labels": labels})
    # The objective as a series, so dashboards across SLOs can divide by each one's budget.
    rules.append({"record": "slo:objective:ratio", "expr": f"vector({number(spec.objective / 100)})",
                  "labels": labels})
    return rules


def burn_alerts(slo: dict, spec: SLOSpec) -> list[dict]:
    """Multi-window multi-burn-rate alerts: both windows must burn faster than `factor`, so an
    alert fires fast on a real burn and resets fast once it stops. A window without traffic has
    no sample, so zero traffic never fires."""
    ident = identity(slo, spec)
    sel = selector_of({"slo": ident["slo"], "slo_namespace": ident["slo_namespace"]})
    budget = 1 - spec.objective / 100
    alerts = []
    for tier in tiers(spec):
        severity, long, short, factor = tier["severity"], tier["long"], tier["short"], tier["factor"]
        threshold = number(factor * budget)
        annotations = {
            "summary": f"{ident['slo']}: error budget burning {number(factor)}x too fast ({long}/{short})",
            "description": (f"{spec.service}{'/' + spec.journey if spec.journey else ''}: error ratio over "
                            f"{long} and {short} is above {threshold} ({number(factor)}x the budget of "
                            f"{number(budget)} for objective {number(spec.objective)}% over {spec.window})."),
        }
        if spec.alerting.runbook_url:
            annotations["runbook_url"] = spec.alerting.runbook_url
        alerts.append({
            "alert": ALERT_NAMES[severity],
            "expr": f"({series(long)}{sel} > {threshold})\nand\n({series(short)}{sel} > {threshold})",
            "for": tier["for"],
            "labels": {**ident, **tier["labels"],
                       "long_window": long, "short_window": short, "burn_factor": number(factor)},
            "annotations": annotations,
            "severity": severity,
            "threshold": threshold,
        })
    return alerts


def absent_alert(slo: dict, spec: SLOSpec) -> list[dict]:
    """The optional alert for an SLI whose metric is missing altogether."""
    policy = spec.alerting.absent
    if not policy.enabled:
        return []
    ident = identity(slo, spec)
    annotations = {"summary": f"{ident['slo']}: the SLI's metric is missing",
                   "description": f"No series for the SLI of {ident['slo']} for {policy.for_}: the error "
                                  "budget cannot be computed (scrape target down or metric renamed)."}
    if spec.alerting.runbook_url:
        annotations["runbook_url"] = spec.alerting.runbook_url
    return [{"alert": ABSENT_ALERT, "expr": f"absent({presence_query(spec)})", "for": policy.for_,
             "labels": {**ident, **(policy.labels or {"severity": "ticket"})}, "annotations": annotations}]


def rule_groups(slo: dict, spec: SLOSpec) -> list[dict]:
    """The PrometheusRule's `spec.groups`, also what `promtool check rules` reads."""
    name = slo["metadata"]["name"]
    alerts = [{k: v for k, v in a.items() if k not in ("severity", "threshold")}
              for a in burn_alerts(slo, spec)] + absent_alert(slo, spec)
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
    ident = identity(slo, spec)
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
                     for i, w in enumerate(windows(spec))]},
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


def folder_uid(folder: str) -> str:
    """A Grafana folder uid from its title: lower case, [a-z0-9-], at most 40 characters."""
    slug = "".join(ch if ch.isalnum() else "-" for ch in folder.lower()).strip("-")
    return (slug or "slos")[:40]


def desired_children(slo: dict, spec: SLOSpec, with_prometheus_rule: bool,
                     with_grafana_operator: bool = False) -> list[dict]:
    """Every child of the SLO; a PrometheusRule and a GrafanaAlertRuleGroup only where their
    CRDs exist."""
    name = slo["metadata"]["name"]
    labels = {"app.kubernetes.io/name": "pim-slo", "app.kubernetes.io/instance": name,
              "app.kubernetes.io/part-of": "pim-sre-lab"}
    children = []
    if with_prometheus_rule:
        children += render("slo/prometheusrule.yaml.j2", name=name, labels=labels, groups=rule_groups(slo, spec))
    folder = spec.grafana.folder
    children += render("slo/grafana-alerts.yaml.j2", name=name, labels=labels, folder=folder,
                       rules=grafana_rules(slo, spec), datasource_uid=DATASOURCE_UID)
    if with_grafana_operator:
        children += render("slo/grafana-alertrulegroup.yaml.j2", name=name, labels=labels,
                           folder_uid=spec.grafana.folder_uid or folder_uid(folder),
                           instance_labels=spec.grafana.instance_labels or {"dashboards": "grafana"},
                           rules=grafana_rules(slo, spec), datasource_uid=DATASOURCE_UID)
    if spec.grafana.dashboard:
        children += render("slo/dashboard.yaml.j2", name=name, labels=labels, folder=folder,
                           dashboard=json.dumps(dashboard(slo, spec), indent=2, sort_keys=True))
    return owned(children, slo)

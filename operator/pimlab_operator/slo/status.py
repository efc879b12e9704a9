"""What an SLO reports: the objects it generated, its error budget as read from Prometheus
(`prometheus.read_slo`), and whether that reading is current (pure).

A budget that cannot be read now is not shown as current: `errorBudget` goes, and the last
reading stays as `lastErrorBudget`, its `evaluatedAt` telling its age.
"""

from __future__ import annotations

import datetime as dt

from pimlab_operator.conditions import Condition
from pimlab_operator.schema import ObjectRef, duration_seconds
from pimlab_operator.slo.desired import alert_windows, series
from pimlab_operator.slo.model import BurnRate, ErrorBudget, FiringAlert, SLOSpec, SLOStatus


def _rounded(value: float | None, digits: int = 6) -> float | None:
    return None if value is None else round(value, digits)


def _timestamp(value: dt.datetime) -> str:
    return value.astimezone(dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def firing_alerts(alerts: list[dict]) -> list[FiringAlert]:
    """The SLO's alerts Prometheus reports firing (not pending), by name and long window."""
    firing = []
    for alert in alerts:
        if alert.get("state") != "firing":
            continue
        labels = alert.get("labels", {})
        firing.append(FiringAlert(alert=labels.get("alertname", "?"), severity=labels.get("severity"),
                                  long_window=labels.get("long_window"), short_window=labels.get("short_window"),
                                  active_since=alert["activeAt"][:19] + "Z" if alert.get("activeAt") else None))
    firing.sort(key=lambda a: (a.alert, a.long_window or ""))
    return firing


def budget_status(slo: dict, spec: SLOSpec, reading: dict, url: str) -> tuple[ErrorBudget, Condition]:
    """`status.errorBudget` from one reading of Prometheus (`prometheus.read_slo`), and the
    BudgetCurrent condition. Pure: the reading carries its own time."""
    series_values, read_at = reading["series"], _timestamp(reading["readAt"])
    budget = 1 - spec.objective / 100
    window_minutes = duration_seconds(spec.window) / 60
    ratio = series_values.get(series(spec.window))
    remaining = series_values.get("slo:error_budget:remaining_ratio")
    if remaining is None and ratio is not None:
        remaining = 1 - ratio / budget
    burns = []
    for window in alert_windows(spec):
        value = series_values.get(series(window))
        burns.append(BurnRate(window=window, read_at=read_at,
                              value=None if value is None else _rounded(max(value, 0.0) / budget)))
    measured = [b for b in burns if b.value is not None]
    worst = max(measured, key=lambda b: b.value) if measured else None
    one_hour, six_hours = series_values.get(series("1h")), series_values.get(series("6h"))
    firing = firing_alerts(reading["alerts"])
    error_budget = ErrorBudget(
        sli=_rounded(None if ratio is None else min(max(1 - ratio, 0.0), 1.0)),
        remaining=_rounded(None if remaining is None else min(remaining, 1.0)),
        remaining_minutes=None if remaining is None else round(min(remaining, 1.0) * budget * window_minutes, 2),
        burn_rate_1h=_rounded(None if one_hour is None else max(one_hour, 0.0) / budget),
        burn_rate_6h=_rounded(None if six_hours is None else max(six_hours, 0.0) / budget),
        worst_burn_rate=worst.value if worst else None,
        worst_burn_window=worst.window if worst else None,
        burn_rates=burns, firing_alerts=firing, evaluated_at=read_at, prometheus_url=url,
    )
    if ratio is None and not measured:
        condition = Condition("BudgetCurrent", True, "NoData",
                              f"read {url} at {read_at}: no recorded SLI series yet (no traffic in any window,"
                              " or the recording rules are not loaded)")
    else:
        names = ", ".join(sorted({a.alert for a in firing})) or "none"
        condition = Condition("BudgetCurrent", True, "Read",
                              f"read {url} at {read_at}; firing alerts: {names}")
    return error_budget, condition


def slo_status(slo: dict, children: list[dict], with_prometheus_rule: bool,
               budget: tuple[ErrorBudget | None, Condition] | None = None) -> tuple[SLOStatus, list[Condition]]:
    """Generated objects, the error budget (when a Prometheus was read) and conditions:
    Ready (rules generated), Degraded (a CRD missing or Prometheus unreadable) and
    BudgetCurrent (whether `errorBudget` is a fresh reading, and if not, why). `budget`: what
    `budget_status` read, (None, why) when Prometheus was unreadable, None when none is named."""
    generated = [ObjectRef(api_version=c["apiVersion"], kind=c["kind"], name=c["metadata"]["name"],
                           namespace=c["metadata"]["namespace"]) for c in children]
    error_budget, budget_condition = budget or (None, Condition(
        "BudgetCurrent", False, "NoPrometheusUrl",
        "no Prometheus to read: set the Lab's spec.observability.prometheusUrl or the operator's --prometheus-url"))
    last = None
    if error_budget is None:
        before = SLOStatus.model_validate(slo.get("status") or {})
        last = before.error_budget or before.last_error_budget
    unreadable = not budget_condition.status and budget_condition.reason != "NoPrometheusUrl"
    if with_prometheus_rule:
        dashboard = any(c.kind == "ConfigMap" and c.name.endswith("-dashboard") for c in generated)
        ready = Condition(
            "Ready", True, "RulesGenerated",
            f"{len(generated)} objects generated (PrometheusRule, Grafana alerts{', dashboard' if dashboard else ''})")
        degraded = (Condition("Degraded", True, budget_condition.reason, budget_condition.message) if unreadable
                    else Condition("Degraded", False, "AllTargetsPresent", "the PrometheusRule CRD exists"))
    else:
        ready = Condition("Ready", False, "PrometheusRuleCRDMissing",
                          "monitoring.coreos.com/v1 PrometheusRule is not installed: no recording rules or "
                          "Prometheus alerts; burn-rate alerts exist only as Grafana alert rules")
        degraded = Condition("Degraded", True, "PrometheusRuleCRDMissing", ready.message)
    status = SLOStatus(phase="Degraded" if degraded.status else "Ready",
                       phase_reason=degraded.message if degraded.status else ready.message,
                       generated_objects=generated, error_budget=error_budget, last_error_budget=last)
    return status, [ready, degraded, budget_condition]

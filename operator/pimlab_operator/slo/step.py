"""SLO -> PrometheusRule (where its CRD exists), Grafana alert provisioning and dashboard; and,
where a Prometheus is named, the error budget read from it (refreshed by the SLO's resync)."""

from __future__ import annotations

import logging
import time

from pimlab_operator import kube, reconcile
from pimlab_operator.conditions import Condition
from pimlab_operator.reconcile import ChildKind
from pimlab_operator.schema import API_VERSION
from pimlab_operator.slo import desired, prometheus, status
from pimlab_operator.slo.model import ErrorBudget, SLOSpec

log = logging.getLogger(__name__)

PROMETHEUS_RULE = ChildKind("monitoring.coreos.com/v1", "PrometheusRule", optional=True)
GRAFANA_ALERT_RULE_GROUP = ChildKind("grafana.integreatly.org/v1beta1", "GrafanaAlertRuleGroup", optional=True)
CHILDREN = (ChildKind("v1", "ConfigMap"), PROMETHEUS_RULE, GRAFANA_ALERT_RULE_GROUP)


def reads_budget(body: dict) -> bool:
    """An SLO that names a Prometheus (read or unreadable) reads its budget every
    `slo_refresh_seconds` (the operator's settings); one with none backs off (a Lab's new
    prometheusUrl is noticed at its next resync)."""
    budget = next((c for c in (body.get("status") or {}).get("conditions") or []
                   if c.get("type") == "BudgetCurrent"), None)
    return budget is not None and budget.get("reason") != "NoPrometheusUrl"

#: How long the Prometheus named for a namespace is reused: every SLO of a namespace asks on
#: every reconcile, and listing the namespace's Labs each time would cost a fifth of the
#: operator's work with 150 SLOs (the cache lives in `ReconcileMemory.prometheus_urls`).
URL_TTL_SECONDS = 10.0


def prometheus_url(namespace: str, default: str | None) -> str | None:
    """The Prometheus of the SLO's namespace: a Lab's spec.observability.prometheusUrl (the
    first by name that sets one), else `default` (the operator's --prometheus-url); at most
    URL_TTL_SECONDS old."""
    urls = reconcile.context().memory.prometheus_urls
    seen = urls.get(namespace)
    if seen and time.monotonic() - seen[0] < URL_TTL_SECONDS:
        return seen[1]
    url = None
    for lab in sorted(kube.list_objects(API_VERSION, "Lab", namespace), key=lambda o: o["metadata"]["name"]):
        url = ((lab.get("spec") or {}).get("observability") or {}).get("prometheusUrl")
        if url:
            break
    url = url or default
    urls[namespace] = (time.monotonic(), url)
    return url


def read_budget(body: dict, spec: SLOSpec) -> tuple[ErrorBudget | None, Condition] | None:
    """The budget and its condition; None where no Prometheus is named."""
    meta = body["metadata"]
    settings = reconcile.context().settings
    url = prometheus_url(meta["namespace"], settings.prometheus_url)
    if not url:
        return None
    try:
        reading = prometheus.read_slo(url, meta["name"], meta["namespace"], settings.prometheus_timeout_seconds)
    except prometheus.PrometheusUnavailable as error:
        log.info("error budget of %s/%s not read: %s", meta["namespace"], meta["name"], error)
        return None, Condition("BudgetCurrent", False, error.reason, str(error)[:1024])
    return status.budget_status(body, spec, reading, url)


def step(body: dict, spec: SLOSpec) -> None:
    with_rule = kube.kind_exists(PROMETHEUS_RULE.api_version, PROMETHEUS_RULE.kind)
    with_group = kube.kind_exists(GRAFANA_ALERT_RULE_GROUP.api_version, GRAFANA_ALERT_RULE_GROUP.kind)
    children = desired.desired_children(body, spec, with_rule, with_grafana_operator=with_group)
    reconcile.apply_children(body, children, prune=CHILDREN)
    reconcile.write_status(body, *status.slo_status(body, children, with_rule, read_budget(body, spec)))

"""SLO -> PrometheusRule (where its CRD exists), Grafana alert provisioning and dashboard."""

from __future__ import annotations

from pimlab_operator import kube, reconcile
from pimlab_operator.reconcile import ChildKind
from pimlab_operator.slo import desired
from pimlab_operator.slo.model import SLOSpec

PROMETHEUS_RULE = ChildKind("monitoring.coreos.com/v1", "PrometheusRule", optional=True)
CHILDREN = (ChildKind("v1", "ConfigMap"), PROMETHEUS_RULE)


def step(body: dict, spec: SLOSpec) -> None:
    with_rule = kube.kind_exists(PROMETHEUS_RULE.api_version, PROMETHEUS_RULE.kind)
    children = desired.desired_children(body, spec, with_rule)
    reconcile.apply_children(body, children, prune=CHILDREN)
    fields, wanted = desired.slo_status(body, children, with_rule)
    reconcile.write_status(body, fields, wanted)

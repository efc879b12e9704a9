"""SLO -> PrometheusRule (where its CRD exists), Grafana alert provisioning and dashboard."""

from __future__ import annotations

from pimlab_operator import kube, reconcile, slo

KIND = "SLO"


def step(body: dict) -> None:
    with_rule = kube.kind_exists(*slo.PROMETHEUS_RULE)
    children = slo.desired_children(body, with_rule)
    reconcile.apply_children(KIND, children)
    fields, wanted = slo.slo_status(body, children, with_rule)
    reconcile.write_status(body, fields, wanted)


# A PrometheusRule CRD installed later, or a deleted child, is picked up.
reconcile.register(KIND, "slos", step, resync_seconds=60, idle_seconds=5)

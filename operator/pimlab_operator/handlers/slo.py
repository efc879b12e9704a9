"""SLO -> PrometheusRule (where its CRD exists), Grafana alert provisioning and dashboard."""

from __future__ import annotations

import kopf

from pimlab_operator import kube, reconcile, slo

KIND = "SLO"


def step(body: dict) -> None:
    with_rule = kube.kind_exists(*slo.PROMETHEUS_RULE)
    children = slo.desired_children(body, with_rule)
    reconcile.apply_children(KIND, children)
    fields, wanted = slo.slo_status(body, children, with_rule)
    reconcile.write_status(body, fields, wanted)


@kopf.on.resume(kube.GROUP, kube.VERSION, "slos", id="slo-resume")
@kopf.on.create(kube.GROUP, kube.VERSION, "slos", id="slo-create")
@kopf.on.update(kube.GROUP, kube.VERSION, "slos", id="slo-update", field="spec")
def on_change(body, reason, **_):
    reconcile.run(KIND, dict(body), str(reason), step)


@kopf.timer(kube.GROUP, kube.VERSION, "slos", id="slo-resync", interval=60, idle=5)
def resync(body, **_):
    """Level-based: a PrometheusRule CRD installed later, or a deleted child, is picked up."""
    reconcile.run(KIND, dict(body), "resync", step)

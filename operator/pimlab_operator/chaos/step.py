"""ChaosExperiment -> a planned, bounded fault: pods deleted by the operator, or Chaos Mesh
objects; each step's intention is in status before it is acted on."""

from __future__ import annotations

from pimlab_operator import kube, reconcile
from pimlab_operator.chaos import desired
from pimlab_operator.chaos.model import ChaosExperimentSpec
from pimlab_operator.objects import label_selector
from pimlab_operator.schema import API_VERSION

#: Chaos Mesh objects are applied once, at injection, and live as long as the experiment: they
#: are not re-declared on every reconcile, so nothing is pruned here.
CHILDREN = ()


def in_flight(body: dict) -> bool:
    """A run waiting, injecting or measuring recovery is followed every few seconds; a planned
    (dry run) or finished one is not."""
    phase = (body.get("status") or {}).get("phase")
    return bool(phase) and phase not in desired.TERMINAL

def _pods_and_shard(body: dict) -> tuple[list[dict], dict | None]:
    namespace = desired.target_namespace(body)
    shard_name = body["spec"]["target"].get("shardRef")
    if shard_name:
        shard = kube.get(API_VERSION, "Shard", shard_name, namespace)
        pods = kube.list_objects("v1", "Pod", namespace,
                                 label_selector=f"app.kubernetes.io/instance={shard_name}")
        return pods, shard
    labels = body["spec"]["target"]["selector"].get("matchLabels") or {}
    return kube.list_objects("v1", "Pod", namespace, label_selector(labels)), None


def _write(body: dict, step: desired.Step) -> dict:
    return reconcile.write_status(body, step.status, step.conditions)


def _act(body: dict, step: desired.Step) -> None:
    namespace = desired.target_namespace(body)
    grace = ((body["spec"].get("parameters") or {}).get("gracePeriodSeconds")) or 0
    if step.action == "deletePods":
        for pod in step.status["plannedTargets"]:
            kube.delete("v1", "Pod", pod, namespace, {"gracePeriodSeconds": grace})
        detail = f"deleted {', '.join(step.status['plannedTargets'])} (grace {grace}s)"
    else:
        reconcile.apply_children(body, step.children)
        detail = f"created {', '.join(c['kind'] + '/' + c['metadata']['name'] for c in step.children)}"
    _write(body, desired.injected(desired.run_fields(body["status"]), detail))


def _replan(body: dict, spec: ChaosExperimentSpec, status: dict) -> None:
    """A dry run's plan follows the pods (e.g. a Shard whose pods appeared after it); written
    only when the targets or the outcome change, so the timeline does not churn."""
    pods, shard = _pods_and_shard(body)
    fresh = desired.start(body, spec, desired.plan(body, spec, pods, shard), True)
    if (fresh.status.get("plannedTargets"), fresh.status["phase"]) != (status.get("plannedTargets"), status["phase"]):
        _write(body, fresh)


def step(body: dict, spec: ChaosExperimentSpec) -> None:
    status = body.get("status") or {}
    if desired.is_new_run(body):
        pods, shard = _pods_and_shard(body)
        installed = spec.action not in desired.CHAOS_MESH or kube.kind_exists(
            desired.CHAOS_MESH_VERSION, desired.CHAOS_MESH[spec.action])
        first = desired.start(body, spec, desired.plan(body, spec, pods, shard), installed)
        body = _write(body, first)  # the intention, before anything is touched
        if first.action:
            _act(body, first)
    elif spec.dry_run and status.get("phase") in ("Planned", "Aborted"):
        _replan(body, spec, status)
    elif status.get("phase") == "Injecting":  # interrupted between intention and record
        _write(body, desired.injected(desired.run_fields(status),
                                      "operator restarted during injection: not repeated"))
    elif status.get("phase") == "Recovering":
        pods, _ = _pods_and_shard(body)
        _write(body, desired.recover(body, spec, desired.run_fields(status), pods))

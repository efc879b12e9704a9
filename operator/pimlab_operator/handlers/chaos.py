"""ChaosExperiment -> a planned, bounded fault: pods deleted by the operator, or Chaos Mesh
objects; each step's intention is in status before it is acted on."""

from __future__ import annotations

from pimlab_operator import chaos, kube, reconcile

KIND = "ChaosExperiment"


def _pods_and_shard(body: dict) -> tuple[list[dict], dict | None]:
    namespace = chaos.target_namespace(body)
    shard_name = body["spec"]["target"].get("shardRef")
    if shard_name:
        shard = kube.get(f"{kube.GROUP}/{kube.VERSION}", "Shard", shard_name, namespace)
        pods = kube.list_objects("v1", "Pod", namespace,
                                 label_selector=f"app.kubernetes.io/instance={shard_name}")
        return pods, shard
    labels = body["spec"]["target"]["selector"].get("matchLabels") or {}
    return kube.list_objects("v1", "Pod", namespace, ",".join(f"{k}={v}" for k, v in labels.items())), None


def _write(body: dict, step: chaos.Step) -> dict:
    status = reconcile.write_status(body, step.status, step.conditions)
    return {**body, "status": status}


def _act(body: dict, step: chaos.Step) -> None:
    namespace = chaos.target_namespace(body)
    grace = ((body["spec"].get("parameters") or {}).get("gracePeriodSeconds")) or 0
    if step.action == "deletePods":
        for pod in step.status["plannedTargets"]:
            kube.delete("v1", "Pod", pod, namespace, {"gracePeriodSeconds": grace})
        detail = f"deleted {', '.join(step.status['plannedTargets'])} (grace {grace}s)"
    else:
        reconcile.apply_children(KIND, step.children)
        detail = f"created {', '.join(c['kind'] + '/' + c['metadata']['name'] for c in step.children)}"
    _write(body, chaos.injected(chaos.run_fields(body["status"]), detail))


def _replan(body: dict, status: dict) -> None:
    """A dry run's plan follows the pods (e.g. a Shard whose pods appeared after it); written
    only when the targets or the outcome change, so the timeline does not churn."""
    pods, shard = _pods_and_shard(body)
    fresh = chaos.start(body, chaos.plan(body, pods, shard), True)
    if (fresh.status.get("plannedTargets"), fresh.status["phase"]) != (status.get("plannedTargets"), status["phase"]):
        _write(body, fresh)


def step(body: dict) -> None:
    status = body.get("status") or {}
    if chaos.is_new_run(body):
        pods, shard = _pods_and_shard(body)
        installed = body["spec"]["action"] not in chaos.CHAOS_MESH or kube.kind_exists(
            chaos.CHAOS_MESH_VERSION, chaos.CHAOS_MESH[body["spec"]["action"]])
        first = chaos.start(body, chaos.plan(body, pods, shard), installed)
        body = _write(body, first)  # the intention, before anything is touched
        if first.action:
            _act(body, first)
    elif body["spec"].get("dryRun") and status.get("phase") in ("Planned", "Aborted"):
        _replan(body, status)
    elif status.get("phase") == "Injecting":  # interrupted between intention and record
        _write(body, chaos.injected(chaos.run_fields(status),
                                    "operator restarted during injection: not repeated"))
    elif status.get("phase") == "Recovering":
        pods, _ = _pods_and_shard(body)
        _write(body, chaos.recover(body, chaos.run_fields(status), pods))


# Recovery is measured by polling: every few seconds while a run is Recovering.
reconcile.register(KIND, "chaosexperiments", step, resync_seconds=5, idle_seconds=2)

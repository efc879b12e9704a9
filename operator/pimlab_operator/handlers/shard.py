"""Shard -> SQL Server StatefulSet, its Services, PDB, config and (generated once) credentials."""

from __future__ import annotations

from pimlab_operator import kube, reconcile, shard

KIND = "Shard"


def _new_password_if_needed(body: dict) -> str | None:
    """A password only when we own the Secret and it does not exist: never regenerated."""
    if not shard.generates_credentials(body):
        return None
    name, namespace = shard.credentials_secret_name(body), body["metadata"]["namespace"]
    return None if kube.get("v1", "Secret", name, namespace) else shard.generate_password()


def _pods(body: dict) -> list[dict]:
    return kube.list_objects("v1", "Pod", body["metadata"]["namespace"],
                             label_selector=shard.label_selector(body["metadata"]["name"]))


def step(body: dict) -> None:
    name, namespace = body["metadata"]["name"], body["metadata"]["namespace"]
    reconcile.apply_children(KIND, shard.desired_children(body, _new_password_if_needed(body)))
    pods = _pods(body)
    assignments = shard.role_assignments(body, pods)
    for pod, role in assignments.items():
        kube.patch_labels("v1", "Pod", pod, namespace, {shard.ROLE_LABEL: role})
    if assignments:
        pods = _pods(body)
    statefulset = kube.get("apps/v1", "StatefulSet", name, namespace)
    fields, wanted = shard.shard_status(body, statefulset, pods)
    reconcile.write_status(body, fields, wanted)


# Pod readiness, role labels and a deleted child converge on the next tick.
reconcile.register(KIND, "shards", step, resync_seconds=20, idle_seconds=5)

"""Shard -> SQL Server StatefulSet, its Services, PDB, config and (generated once) credentials."""

from __future__ import annotations

from pimlab_operator import kube, reconcile, shard

KIND = "Shard"


def _credentials(body: dict) -> tuple[str | None, bool]:
    """(a new password, whether the credentials Secret is missing for good).

    A password is generated only once, for a Shard whose StatefulSet does not exist yet. If the
    Secret disappears after SQL Server was initialised with it, a new password would lock the
    operator and the services out: the Shard reports it instead of inventing one."""
    name, namespace = body["metadata"]["name"], body["metadata"]["namespace"]
    if kube.get("v1", "Secret", shard.credentials_secret_name(body), namespace):
        return None, False
    first_time = shard.generates_credentials(body) and \
        kube.get("apps/v1", "StatefulSet", name, namespace) is None
    return (shard.generate_password(), False) if first_time else (None, True)


def _pods(body: dict) -> list[dict]:
    return kube.list_objects("v1", "Pod", body["metadata"]["namespace"],
                             label_selector=shard.label_selector(body["metadata"]["name"]))


def step(body: dict) -> None:
    name, namespace = body["metadata"]["name"], body["metadata"]["namespace"]
    password, credentials_missing = _credentials(body)
    reconcile.apply_children(KIND, shard.desired_children(body, password))
    pods = _pods(body)
    assignments = shard.role_assignments(body, pods)
    for pod, role in assignments.items():
        kube.patch_labels("v1", "Pod", pod, namespace, {shard.ROLE_LABEL: role})
    if assignments:
        pods = _pods(body)
    statefulset = kube.get("apps/v1", "StatefulSet", name, namespace)
    fields, wanted = shard.shard_status(body, statefulset, pods, credentials_missing)
    reconcile.write_status(body, fields, wanted)


# Pod readiness, role labels and a deleted child converge on the next tick.
reconcile.register(KIND, "shards", step, resync_seconds=20, idle_seconds=5)

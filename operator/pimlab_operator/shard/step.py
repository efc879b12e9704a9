"""Shard -> SQL Server StatefulSet, its Services, PDB, config and (generated once) credentials."""

from __future__ import annotations

from pimlab_operator import kube, reconcile
from pimlab_operator.objects import label_selector
from pimlab_operator.reconcile import ChildKind
from pimlab_operator.shard import desired
from pimlab_operator.shard.model import ShardSpec

CHILDREN = (
    ChildKind("v1", "Secret"), ChildKind("v1", "ConfigMap"), ChildKind("v1", "Service"),
    ChildKind("apps/v1", "StatefulSet"), ChildKind("policy/v1", "PodDisruptionBudget"),
)


def _credentials(body: dict) -> tuple[str | None, bool, bool]:
    """(a new password, whether our Secret exists, whether the Secret is missing for good).

    A password is generated only once, for a Shard whose StatefulSet does not exist yet. If the
    Secret disappears after SQL Server was initialised with it, a new password would lock the
    operator and the services out: the Shard reports it instead of inventing one."""
    name, namespace = body["metadata"]["name"], body["metadata"]["namespace"]
    if kube.get("v1", "Secret", desired.credentials_secret_name(body), namespace):
        return None, True, False
    first_time = desired.generates_credentials(body) and \
        kube.get("apps/v1", "StatefulSet", name, namespace) is None
    return (desired.generate_password(), False, False) if first_time else (None, False, True)


def _pods(body: dict) -> list[dict]:
    return kube.list_objects("v1", "Pod", body["metadata"]["namespace"],
                             label_selector=label_selector(desired.selector(body["metadata"]["name"])))


def step(body: dict, spec: ShardSpec) -> None:
    name, namespace = body["metadata"]["name"], body["metadata"]["namespace"]
    password, secret_exists, credentials_missing = _credentials(body)
    # The generated Secret is applied once; afterwards it is kept, never rewritten or pruned.
    keep = (("v1", "Secret", desired.credentials_secret_name(body)),) if secret_exists else ()
    reconcile.apply_children(body, desired.desired_children(body, spec, password), prune=CHILDREN, keep=keep)
    pods = _pods(body)
    assignments = desired.role_assignments(body, pods)
    for pod, role in assignments.items():
        kube.patch_labels("v1", "Pod", pod, namespace, {desired.ROLE_LABEL: role})
    if assignments:
        pods = _pods(body)
    statefulset = kube.get("apps/v1", "StatefulSet", name, namespace)
    fields, wanted = desired.shard_status(body, statefulset, pods, credentials_missing)
    reconcile.write_status(body, fields, wanted)

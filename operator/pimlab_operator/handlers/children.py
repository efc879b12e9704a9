"""Edges that make reconciling prompt: a managed child deleted or changed, or a Shard that
a Lab's shard map depends on. The timers would repair all of these anyway, only later."""

from __future__ import annotations

import kopf

from pimlab_operator import kube, reconcile
from pimlab_operator.handlers import lab

MANAGED = {"app.kubernetes.io/managed-by": kube.FIELD_MANAGER}
STATUS_CHILDREN = {"deployments", "statefulsets", "jobs", "cronjobs"}


def _reconcile_owner(body, trigger: str) -> None:
    for ref in body.get("metadata", {}).get("ownerReferences") or []:
        step = reconcile.STEPS.get(ref.get("kind"))
        if step and ref.get("apiVersion") == f"{kube.GROUP}/{kube.VERSION}":
            owner = kube.get(ref["apiVersion"], ref["kind"], ref["name"], body["metadata"]["namespace"])
            if owner:
                reconcile.run(ref["kind"], owner, trigger, step)


def _watch(group: str, version: str, plural: str):
    @kopf.on.event(group, version, plural, labels=MANAGED, id=f"child-{plural}")
    def child_event(type, body, **_):
        if type == "DELETED":
            _reconcile_owner(body, f"child-deleted:{plural}")
        elif plural in STATUS_CHILDREN and type == "MODIFIED":
            _reconcile_owner(body, "child-status")
    return child_event


for _group, _version, _plural in (
    ("apps", "v1", "deployments"),
    ("", "v1", "services"),
    ("", "v1", "configmaps"),
    ("policy", "v1", "poddisruptionbudgets"),
    ("autoscaling", "v2", "horizontalpodautoscalers"),
    ("apps", "v1", "statefulsets"),
    ("", "v1", "secrets"),
    ("batch", "v1", "jobs"),
    ("batch", "v1", "cronjobs"),
):
    _watch(_group, _version, _plural)


_shard_fingerprints: dict[tuple[str, str], str] = {}


@kopf.on.event(kube.GROUP, kube.VERSION, "shards", id="shard-to-lab")
def shard_changed(type, body, **_):
    """A Shard added, moved or removed changes the shard map of the Labs that select it.
    Status-only updates (frequent) do not: those are filtered by a fingerprint."""
    key = (body["metadata"]["namespace"], body["metadata"]["name"])
    fingerprint = "" if type == "DELETED" else repr(
        (body["metadata"].get("labels"), body["spec"].get("ordinal"), body["spec"].get("slots"),
         body["spec"].get("credentialsSecretRef")))
    previous = _shard_fingerprints.get(key)
    _shard_fingerprints[key] = fingerprint
    if type is None or previous == fingerprint:  # initial listing: Labs resume on their own
        return
    for owner in kube.list_objects(f"{kube.GROUP}/{kube.VERSION}", "Lab", key[0]):
        reconcile.run("Lab", owner, "shard-changed", lab.step)

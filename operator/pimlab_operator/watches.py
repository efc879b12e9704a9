"""Edges that make reconciling prompt: a managed child deleted or changed, or a Shard that a
Lab's shard map depends on. The resyncs would repair all of these anyway, only later.
`pimlab_operator.kinds` registers these functions with kopf."""

from __future__ import annotations

from typing import Callable

from pimlab_operator import kube, reconcile, resync
from pimlab_operator.objects import selector_matches
from pimlab_operator.reconcile import Kind
from pimlab_operator.schema import API_VERSION

#: Children whose status changes are worth an owner's prompt look (readiness, run progress).
STATUS_CHILDREN = {"Deployment", "StatefulSet", "Job", "CronJob"}


def child_event(kinds: dict[str, Kind], child_kind: str) -> Callable:
    """kopf event handler for one child kind: note the child's content (`reconcile.child_seen`),
    and wake the owner of a deleted child, or of a child whose status moved."""
    def on_event(type, body, **_):
        reconcile.child_seen(type, body, child_kind)
        if type == "DELETED" or (type == "MODIFIED" and child_kind in STATUS_CHILDREN):
            trigger = f"child-deleted:{child_kind}" if type == "DELETED" else "child-status"
            namespace = body["metadata"]["namespace"]
            for ref in body.get("metadata", {}).get("ownerReferences") or []:
                owner_kind = kinds.get(ref.get("kind"))
                if owner_kind and ref.get("apiVersion") == API_VERSION:
                    _wake(owner_kind, namespace, ref["name"], trigger)
    return on_event


def _wake(kind: Kind, namespace: str, name: str, trigger: str, body: dict | None = None) -> None:
    """Reconcile an object now: through its resync task, or here if it has none yet."""
    if resync.poke(kind.name, namespace, name, trigger):
        return
    owner = body or kube.get(API_VERSION, kind.name, name, namespace)
    if owner:
        reconcile.run(kind, owner, trigger)


def shard_to_labs(lab_kind: Kind) -> Callable:
    """A Shard added, moved or removed changes the shard map of the Labs in its namespace that
    select it (by its labels before or after the change). Status-only updates (frequent) do
    not: those are filtered by a fingerprint."""
    fingerprints: dict[tuple[str, str], tuple[str, dict]] = {}

    def on_event(type, body, **_):
        key = (body["metadata"]["namespace"], body["metadata"]["name"])
        labels = dict(body["metadata"].get("labels") or {})
        fingerprint = "" if type == "DELETED" else repr(
            (labels, body["spec"].get("ordinal"), body["spec"].get("slots"),
             body["spec"].get("credentialsSecretRef")))
        previous, previous_labels = fingerprints.get(key, (None, labels))
        fingerprints[key] = (fingerprint, labels)
        if type == "DELETED":
            fingerprints.pop(key, None)
        if type is None or previous == fingerprint:  # initial listing: Labs resume on their own
            return
        for lab in kube.list_objects(API_VERSION, lab_kind.name, key[0]):
            selector = (lab.get("spec") or {}).get("shardSelector")
            if selector_matches(selector, labels) or selector_matches(selector, previous_labels):
                _wake(lab_kind, key[0], lab["metadata"]["name"], "shard-changed",
                      {"apiVersion": API_VERSION, "kind": lab_kind.name, **lab})
    return on_event

"""Edges that make reconciling prompt: a managed child deleted or changed, or a Shard that a
Lab's shard map depends on. The resyncs would repair all of these anyway, only later.
`pimlab_operator.kinds` registers these functions with kopf."""

from __future__ import annotations

import asyncio
from typing import Callable

from pimlab_operator import kube, reconcile, resync
from pimlab_operator.objects import ready_condition, selector_matches
from pimlab_operator.reconcile import Context, Kind
from pimlab_operator.schema import API_VERSION

#: Children whose status changes are worth an owner's prompt look (readiness, run progress, a
#: Drill's load and injections).
STATUS_CHILDREN = {"Deployment", "StatefulSet", "Job", "CronJob", "PersonaLoad", "ChaosExperiment"}


def child_event(ctx: Context, kinds: dict[str, Kind], child_kind: str) -> Callable:
    """kopf event handler for one child kind: note the child's content (`reconcile.child_seen`),
    and wake the owner of a deleted child, or of a child whose status moved. It runs on the
    event loop (no worker thread): thousands of children must not queue behind reconciles."""
    async def on_event(type, body, memo, **_):
        reconcile.child_seen(ctx.memory, type, body, child_kind)
        if type == "DELETED" or (type == "MODIFIED" and child_kind in STATUS_CHILDREN):
            trigger = f"child-deleted:{child_kind}" if type == "DELETED" else "child-status"
            namespace = body["metadata"]["namespace"]
            for ref in body.get("metadata", {}).get("ownerReferences") or []:
                owner_kind = kinds.get(ref.get("kind"))
                if owner_kind and ref.get("apiVersion") == API_VERSION and \
                        not resync.poke(ctx.memory, owner_kind.name, namespace, ref["name"], trigger):
                    await asyncio.get_running_loop().run_in_executor(
                        memo.executor, _reconcile_now, ctx, owner_kind, namespace, ref["name"], trigger, None)
    return on_event


def _reconcile_now(ctx: Context, kind: Kind, namespace: str, name: str, trigger: str, body: dict | None) -> None:
    """An object with no resync task yet (the operator starting): reconciled in this thread."""
    owner = body or kube.get(API_VERSION, kind.name, name, namespace)
    if owner:
        reconcile.run(ctx, kind, owner, trigger)


def _wake_labs(ctx: Context, lab_kind: Kind, namespace: str, labels: dict, previous_labels: dict) -> None:
    for lab in kube.list_objects(API_VERSION, lab_kind.name, namespace):
        selector = (lab.get("spec") or {}).get("shardSelector")
        if selector_matches(selector, labels) or selector_matches(selector, previous_labels):
            name = lab["metadata"]["name"]
            if not resync.poke(ctx.memory, lab_kind.name, namespace, name, "shard-changed"):
                _reconcile_now(ctx, lab_kind, namespace, name, "shard-changed",
                               {"apiVersion": API_VERSION, "kind": lab_kind.name, **lab})


def shard_to_labs(ctx: Context, lab_kind: Kind) -> Callable:
    """A Shard added, moved or removed changes the shard map of the Labs in its namespace that
    select it (by its labels before or after the change), and a change of its Ready condition
    (status and reason) changes their ShardsReady. Other status updates (frequent) do not wake
    them: those are filtered by a fingerprint, on the event loop."""
    fingerprints: dict[tuple[str, str], tuple[str, dict]] = {}

    async def on_event(type, body, memo, **_):
        key = (body["metadata"]["namespace"], body["metadata"]["name"])
        labels = dict(body["metadata"].get("labels") or {})
        condition = ready_condition(body)
        ready = (condition.get("status"), condition.get("reason")) if condition else None
        fingerprint = "" if type == "DELETED" else repr(
            (labels, body["spec"].get("ordinal"), body["spec"].get("slots"),
             body["spec"].get("credentialsSecretRef"), ready))
        previous, previous_labels = fingerprints.get(key, (None, labels))
        fingerprints[key] = (fingerprint, labels)
        if type == "DELETED":
            fingerprints.pop(key, None)
        if type is None or previous == fingerprint:  # initial listing: Labs resume on their own
            return
        await asyncio.get_running_loop().run_in_executor(
            memo.executor, _wake_labs, ctx, lab_kind, key[0], labels, previous_labels)
    return on_event

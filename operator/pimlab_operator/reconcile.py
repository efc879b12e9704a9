"""The shared reconcile loop: desired children -> server-side apply -> status with conditions.

Each kind's handler module supplies two pure functions (children and status) and the inputs
they need; this module does the I/O the same way for every kind, serialised per object so a
timer, an edit and a deleted child never reconcile the same object at once.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from typing import Callable

import kopf
from kubernetes.dynamic.exceptions import ForbiddenError

from pimlab_operator import conditions, kube
from pimlab_operator.metrics import APPLIED, observed

_locks: dict[tuple[str, str, str], threading.Lock] = defaultdict(threading.Lock)


def lock_for(kind: str, namespace: str, name: str) -> threading.Lock:
    return _locks[(kind, namespace, name)]


def apply_children(kind: str, children: list[dict]) -> list[dict]:
    applied = []
    for child in children:
        applied.append(kube.apply(child))
        APPLIED.labels(kind, child["kind"]).inc()
    return applied


def write_status(body: dict, fields: dict, wanted: list[conditions.Condition]) -> dict:
    """Stamp observedGeneration, merge conditions, write via the status subresource, and
    announce every condition transition as a Kubernetes Event."""
    meta = body["metadata"]
    previous = (body.get("status") or {}).get("conditions") or []
    merged = conditions.merge(previous, wanted, meta.get("generation", 1))
    status = {**fields, "observedGeneration": meta.get("generation", 1), "conditions": merged}
    kube.patch_status(body["kind"], meta["name"], meta["namespace"], status)
    before = {c["type"]: c["status"] for c in previous}
    for condition in merged:
        kind_of, status_of = condition["type"], condition["status"]
        if before.get(kind_of) == status_of or kind_of not in {"Ready", "Degraded"}:
            continue
        healthy = (kind_of == "Ready") == (status_of == "True")
        (kopf.info if healthy else kopf.warn)(body, reason=condition["reason"],
                  message=f"{condition['type']}={condition['status']}: {condition['message']}")
    return status


def run(kind: str, body: dict, trigger: str, step: Callable[[dict], None]) -> None:
    meta = body["metadata"]
    with lock_for(kind, meta["namespace"], meta["name"]), observed(kind, trigger):
        fresh = kube.get(body["apiVersion"], kind, meta["name"], meta["namespace"])
        if fresh is None or fresh["metadata"].get("deletionTimestamp"):
            return
        try:
            step(fresh)
        except ForbiddenError as error:
            # The namespace is being deleted: its objects go away with it, nothing to repair.
            if "NamespaceTerminating" not in str(error.body):
                raise


#: kind -> its step, for the handlers that reconcile an owner when a child changes.
STEPS: dict[str, Callable[[dict], None]] = {}


def register(kind: str, plural: str, step: Callable[[dict], None], *, resync_seconds: float,
             idle_seconds: float = 5) -> None:
    """Every kind reconciles on the same triggers: creation, a spec change and the operator's
    own restart (edges), and a resync timer (level) that repairs whatever an edge missed."""
    STEPS[kind] = step
    prefix = kind.lower()

    def on_change(body, reason, **_):
        run(kind, dict(body), str(reason), step)

    def resync(body, **_):
        run(kind, dict(body), "resync", step)

    kopf.on.resume(kube.GROUP, kube.VERSION, plural, id=f"{prefix}-resume")(on_change)
    kopf.on.create(kube.GROUP, kube.VERSION, plural, id=f"{prefix}-create")(on_change)
    kopf.on.update(kube.GROUP, kube.VERSION, plural, id=f"{prefix}-update", field="spec")(on_change)
    kopf.timer(kube.GROUP, kube.VERSION, plural, id=f"{prefix}-resync",
               interval=resync_seconds, idle=idle_seconds)(resync)

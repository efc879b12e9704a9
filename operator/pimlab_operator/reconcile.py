"""The shared reconcile loop: parse the spec once, apply the desired children, prune the ones
that left, write status with conditions.

Every kind runs through `run`, serialised per object, so a timer, an edit and a deleted child
never reconcile the same object at once. A kind's step gets the fresh object and its typed
spec; it computes what it wants purely and calls `apply_children` and `write_status`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Callable

import kopf
from kubernetes.dynamic.exceptions import ConflictError, ForbiddenError
from pydantic import ValidationError

from pimlab_operator import conditions, kube
from pimlab_operator.metrics import APPLIED, PRUNED, observed
from pimlab_operator.objects import label_selector, owned_by
from pimlab_operator.render import owner_labels
from pimlab_operator.schema import Resource

log = logging.getLogger(__name__)

#: A status write that lost a race is decided again from a fresh read, at most this often.
CONFLICT_ATTEMPTS = 4
#: An object whose stored spec fails the model is looked at again after this delay, doubling
#: up to the maximum, unless its spec changes (a new generation is parsed at once).
INVALID_FIRST_DELAY, INVALID_MAX_DELAY = 30.0, 900.0


@dataclass(frozen=True)
class ChildKind:
    """A kind of object a custom resource may own; `optional` ones exist only where their CRD
    is installed."""

    api_version: str
    kind: str
    optional: bool = False


@dataclass(frozen=True)
class Kind:
    """One row of the table in `pimlab_operator.kinds`."""

    model: type[Resource]
    step: Callable[[dict, Any], None]
    resync_seconds: float
    idle_seconds: float = 5
    children: tuple[ChildKind, ...] = ()

    @property
    def name(self) -> str:
        return self.model.model_fields["kind"].default

    @property
    def plural(self) -> str:
        return self.model.crd.plural

    @property
    def spec_model(self) -> type:
        return self.model.model_fields["spec"].annotation


_locks: dict[tuple[str, str, str], threading.Lock] = defaultdict(threading.Lock)
#: (kind, namespace, name) -> (generation, when to look again, current delay)
_invalid: dict[tuple[str, str, str], tuple[int, float, float]] = {}


def identity(obj: dict) -> tuple[str, str, str]:
    return obj["apiVersion"], obj["kind"], obj["metadata"]["name"]


def apply_children(owner: dict, children: list[dict], prune: tuple[ChildKind, ...] = (),
                   keep: tuple[tuple[str, str, str], ...] = ()) -> list[dict]:
    """Server-side apply `children`, then delete every object of the `prune` kinds that this
    owner made (its label and its uid in ownerReferences) and that is neither applied now nor
    in `keep`. Objects with our labels but another owner are never touched."""
    applied = []
    for child in children:
        applied.append(kube.apply(child))
        APPLIED.labels(owner["kind"], child["kind"]).inc()
    if prune:
        wanted = {identity(c) for c in children} | set(keep)
        for stale in owned_children(owner, prune):
            if identity(stale) not in wanted:
                log.info("pruning %s/%s: no longer desired", stale["kind"], stale["metadata"]["name"])
                kube.delete(stale["apiVersion"], stale["kind"], stale["metadata"]["name"],
                            stale["metadata"]["namespace"], {"propagationPolicy": "Background"})
                PRUNED.labels(owner["kind"], stale["kind"]).inc()
    return applied


def owned_children(owner: dict, kinds: tuple[ChildKind, ...]) -> list[dict]:
    """The objects of `kinds` that carry this owner's label and name its uid as an owner."""
    meta = owner["metadata"]
    selector = label_selector(owner_labels(owner))
    found = []
    for child_kind in kinds:
        if child_kind.optional and not kube.kind_exists(child_kind.api_version, child_kind.kind):
            continue
        for obj in kube.list_objects(child_kind.api_version, child_kind.kind, meta["namespace"], selector):
            if owned_by(obj, meta["uid"]):
                found.append({"apiVersion": child_kind.api_version, "kind": child_kind.kind, **obj})
    return found


def _announce(body: dict, previous: list[dict], written: list[dict]) -> None:
    """A Kubernetes Event for each Ready/Degraded condition whose status or reason changed."""
    before = {c["type"]: (c.get("status"), c.get("reason")) for c in previous}
    for condition in written:
        if condition["type"] not in ("Ready", "Degraded"):
            continue
        if before.get(condition["type"]) == (condition["status"], condition["reason"]):
            continue
        healthy = (condition["type"] == "Ready") == (condition["status"] == "True")
        kube.post_event(body, "Normal" if healthy else "Warning", condition["reason"],
                        f"{condition['type']}={condition['status']}: {condition['message']}")


def write_status(body: dict, fields: dict, wanted: list[conditions.Condition]) -> dict:
    """Write `fields` and the `wanted` conditions through the status subresource, guarded by
    the resourceVersion `body` was read at (a 409 means someone wrote since: `run` decides
    again from a fresh read). Stamps observedGeneration on status and on every condition, and
    keeps each condition's lastTransitionTime unless its status changes. Returns the object as
    written, to chain a second write within one step."""
    meta = body["metadata"]
    generation = meta.get("generation", 1)
    previous = (body.get("status") or {}).get("conditions") or []
    merged = conditions.merge(previous, wanted, generation)
    status = {**fields, "observedGeneration": generation, "conditions": merged}
    written = kube.apply_status(body, status)
    _announce(body, previous, merged)
    return written


def _invalid_spec_message(error: ValidationError) -> str:
    """Each failing field as `spec.<path>: <what is wrong>`."""
    lines = []
    for item in error.errors(include_url=False):
        path = ".".join(str(part) for part in ("spec", *item["loc"]))
        lines.append(f"{path}: {item['msg']}")
    return "; ".join(lines)[:1024]


def _report_invalid(body: dict, error: ValidationError) -> None:
    """Ready=False/InvalidSpec with the fields at fault, and a Warning Event; the rest of the
    status and every child stay as they are."""
    message = _invalid_spec_message(error)
    status = body.get("status") or {}
    ours = {c["type"]: c for c in status.get("conditions") or []}
    kept = [conditions.Condition(c["type"], c["status"] == "True", c["reason"], c.get("message") or "")
            for t, c in ours.items() if t != "Ready"]
    fields = {k: v for k, v in status.items() if k not in ("conditions", "observedGeneration")}
    fields["phaseReason"] = f"invalid spec: {message}"[:1024]
    write_status(body, fields, [conditions.Condition("Ready", False, "InvalidSpec", message), *kept])


def _waiting_after_invalid(key: tuple[str, str, str], generation: int) -> bool:
    """Whether an object found invalid before is still inside its back-off window."""
    seen = _invalid.get(key)
    return bool(seen) and seen[0] == generation and time.monotonic() < seen[1]


def _remember_invalid(key: tuple[str, str, str], generation: int) -> None:
    seen = _invalid.get(key)
    delay = INVALID_FIRST_DELAY if not seen or seen[0] != generation else min(seen[2] * 2, INVALID_MAX_DELAY)
    _invalid[key] = (generation, time.monotonic() + delay, delay)


def run(kind: Kind, body: dict, trigger: str) -> None:
    """Reconcile one object: read it fresh, parse its spec once, run the kind's step. A lost
    status race is decided again from a fresh read."""
    meta = body["metadata"]
    key = (kind.name, meta["namespace"], meta["name"])
    with _locks[key], observed(kind.name, trigger):
        for _ in range(CONFLICT_ATTEMPTS):
            fresh = kube.get(body["apiVersion"], kind.name, meta["name"], meta["namespace"])
            if fresh is None or fresh["metadata"].get("deletionTimestamp"):
                return
            generation = fresh["metadata"].get("generation", 1)
            if _waiting_after_invalid(key, generation):
                return
            try:
                try:
                    spec = kind.spec_model.model_validate(fresh.get("spec") or {})
                except ValidationError as error:
                    _remember_invalid(key, generation)
                    _report_invalid(fresh, error)
                    return
                _invalid.pop(key, None)
                kind.step(fresh, spec)
                return
            except ConflictError:
                log.info("status of %s/%s changed while reconciling: deciding again", *key[1:])
            except ForbiddenError as error:
                # The namespace is being deleted: its objects go away with it, nothing to repair.
                if "NamespaceTerminating" not in str(error.body):
                    raise
                return
        raise kopf.TemporaryError(f"status kept changing under {trigger}", delay=5)

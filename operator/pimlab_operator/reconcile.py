"""The shared reconcile loop: parse the spec once, apply the desired children, prune the ones
that left, write status with conditions.

Every kind runs through `run`, serialised per object, so a resync, an edit and a deleted child
never reconcile the same object at once. A kind's step gets the fresh object and its typed
spec; it computes what it wants purely and calls `apply_children` and `write_status`.

What the operator remembers between reconciles is one `ReconcileMemory`; it and the settings
reach each reconcile in a `Context` that `run` makes current for the reconcile's duration.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections import defaultdict
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Callable, get_args

import kopf
from pydantic import ValidationError

from pimlab_operator import conditions, kube
from pimlab_operator.config import Settings
from pimlab_operator.metrics import APPLIED, PRUNED, observed
from pimlab_operator.objects import label_selector, owned_by
from pimlab_operator.render import owner_labels
from pimlab_operator.schema import Condition, Resource, StatusBase

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
class Resync:
    """When an object is reconciled with no event (the level that repairs a missed edge).

    Every `seconds` after its last reconcile; each resync that changes nothing multiplies that
    by RESYNC_BACKOFF, up to `max_seconds`, and any change brings it back to `seconds`. While
    `follow(body)` is true the object is instead reconciled every `follow_seconds` with no
    back-off (a budget read from Prometheus, a failover pass, an experiment recovering), under
    the trigger name `follow_trigger`. `seconds` may be a function of the operator's settings
    (an SLO's refresh period is one)."""

    seconds: float | Callable[[Settings], float]
    max_seconds: float = 600.0
    follow: Callable[[dict], bool] | None = None
    follow_seconds: float | None = None
    follow_trigger: str = "resync"

    def following(self, body: dict) -> bool:
        return bool(self.follow and self.follow(body))

    def base_seconds(self, settings: Settings) -> float:
        return self.seconds(settings) if callable(self.seconds) else self.seconds


@dataclass(frozen=True)
class Kind:
    """One row of the table in `pimlab_operator.kinds`."""

    model: type[Resource]
    step: Callable[[dict, Any], None]
    resync: Resync
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

    @property
    def status_model(self) -> type[StatusBase]:
        """The kind's status model: the resource declares `status: <Kind>Status | None`."""
        return next(t for t in get_args(self.model.model_fields["status"].annotation) if t is not type(None))


#: An object's key in the memory: (kind, namespace, name).
Key = tuple[str, str, str]

#: A quiet resync (every child and the status as they were) multiplies the period by this.
RESYNC_BACKOFF = 4
#: The prune lists are skipped while the desired set is the one last pruned against, but
#: never for longer than this (a stray object made by someone else is still found).
PRUNE_RECHECK_SECONDS = 600.0
#: Children of kinds the operator does not watch (the optional third-party kinds) are sent
#: again at most this often.
UNWATCHED_RESEND_SECONDS = 600.0
#: What a child's content is compared without: what only its controllers write, or moves with it.
_NOT_CONTENT = ("status",)
_NOT_CONTENT_META = ("resourceVersion", "managedFields", "generation")


class ReconcileMemory:
    """What the operator remembers between reconciles: per object, its reconcile lock, its
    back-offs (quiet resyncs, an invalid spec), what was last applied and pruned for it, its
    resync task, and for a Shard its failover pass lock and last logged decision; per child,
    its content as the watches last saw it.

    Lifetime: one per operator process, created at start (`kinds.register`) and handed to
    every reconcile in its `Context`; a restart starts empty (the first reconcile of each
    object applies its children once more). An object's entries are dropped when it is
    deleted (`forget`: from the reconcile that finds it gone or deleting, and from a Shard's
    DELETED event), a child's when its DELETED event arrives, a resync task's when kopf stops
    it."""

    def __init__(self) -> None:
        #: one reconcile of an object at a time
        self.locks: dict[Key, threading.Lock] = defaultdict(threading.Lock)
        #: Objects with a trigger waiting for their lock: it will read the object fresh once it
        #: gets the lock, so it covers every trigger that arrives meanwhile (they return at once).
        self.queued: set[Key] = set()
        self.queued_lock = threading.Lock()
        #: key -> (generation, when to look again, current delay) of an object whose spec fails its model
        self.invalid: dict[Key, tuple[int, float, float]] = {}
        #: key -> (quiet resyncs in a row, when the last reconcile ended)
        self.quiet: dict[Key, tuple[int, float]] = {}
        #: owner uid -> {child identity: (content of what our last apply returned, digest of
        #: what we applied, when)}
        self.applied_versions: dict[str, dict[tuple[str, str, str], tuple[bytes, bytes, float]]] = {}
        #: (apiVersion, kind) of the children the operator watches (`watch_children`)
        self.watched: set[tuple[str, str]] = set()
        #: (namespace, apiVersion, kind, name) -> content of the latest version the child watches saw
        self.seen_versions: dict[tuple[str, str, str, str], bytes] = {}
        #: owner uid -> (the desired identities last pruned against, when)
        self.pruned_against: dict[str, tuple[frozenset, float]] = {}
        #: whether the reconcile running in this thread changed anything
        self.changes = threading.local()
        #: key -> the object's running resync task (`resync.daemon`)
        self.tasks: dict[Key, Any] = {}
        self.tasks_lock = threading.Lock()
        #: Shard uid -> the lock of its failover pass (`shard.step`: one pass at a time)
        self.failover_passes: dict[str, threading.Lock] = {}
        self.failover_passes_lock = threading.Lock()
        #: Shard uid -> the (phase, reason) of its last logged failover pass
        self.last_said: dict[str, tuple[str, str]] = {}
        #: namespace -> (when looked up, the Prometheus URL its Labs name): `slo.step.prometheus_url`
        self.prometheus_urls: dict[str, tuple[float, str | None]] = {}

    def failover_pass_lock(self, uid: str) -> threading.Lock:
        with self.failover_passes_lock:
            return self.failover_passes.setdefault(uid, threading.Lock())

    def forget(self, key: Key, uid: str | None) -> None:
        """Drop what is remembered about an object that is gone (its resync task ends with it)."""
        self.quiet.pop(key, None)
        self.invalid.pop(key, None)
        self.locks.pop(key, None)
        if uid:
            self.applied_versions.pop(uid, None)
            self.pruned_against.pop(uid, None)
            with self.failover_passes_lock:
                self.failover_passes.pop(uid, None)
            self.last_said.pop(uid, None)


@dataclass(frozen=True)
class Context:
    """What one operator hands each reconcile: its settings and its memory, both made once at
    start. `run` makes it current (`context()`) for exactly one reconcile, so a kind's step and
    the helpers it calls reach it without every step signature carrying it."""

    settings: Settings
    memory: ReconcileMemory


_current: ContextVar[Context] = ContextVar("reconcile_context")


def context() -> Context:
    """The context of the reconcile running here; LookupError outside one."""
    return _current.get()


def _changed() -> None:
    """The running reconcile changed something (outside one, e.g. a finalizer's cleanup, there
    is no resync to count)."""
    current = _current.get(None)
    if current is not None:
        current.memory.changes.seen = True


def watch_children(memory: ReconcileMemory, kinds: set[tuple[str, str]]) -> None:
    """The (apiVersion, kind) pairs whose watch events reach `child_seen`."""
    memory.watched.update(kinds)


def child_seen(memory: ReconcileMemory, event_type: str | None, body: dict, kind: str) -> None:
    """Every watch event of a managed child: its content as it is now (see `apply_children`)."""
    meta = body.get("metadata") or {}
    key = (meta.get("namespace") or "", body.get("apiVersion") or "", kind, meta.get("name") or "")
    if event_type == "DELETED":
        memory.seen_versions.pop(key, None)
    else:
        memory.seen_versions[key] = _content(body)


def _digest(obj: dict) -> bytes:
    return hashlib.blake2b(json.dumps(obj, sort_keys=True, default=str).encode(), digest_size=16).digest()


def _content(obj: dict) -> bytes:
    """A digest of everything in `obj` except its status and bookkeeping (resourceVersion,
    generation, managedFields): a status update by a controller leaves it as it is; any edit of
    spec, data, labels, annotations or owners changes it."""
    meta = {k: v for k, v in (obj.get("metadata") or {}).items() if k not in _NOT_CONTENT_META}
    return _digest({**{k: v for k, v in obj.items() if k not in _NOT_CONTENT}, "metadata": meta})


def identity(obj: dict) -> tuple[str, str, str]:
    return obj["apiVersion"], obj["kind"], obj["metadata"]["name"]


def apply_children(owner: dict, children: list[dict], prune: tuple[ChildKind, ...] = (),
                   keep: tuple[tuple[str, str, str], ...] = ()) -> list[dict]:
    """Server-side apply `children`, then delete every object of the `prune` kinds that this
    owner made (its label and its uid in ownerReferences) and that is neither applied now nor
    in `keep`. Objects with our labels but another owner are never touched.

    A child is not sent again when its manifest is the one we applied last and the child
    watches (`child_seen`) show its content (all but status and bookkeeping) as that apply
    returned it: nobody changed it since, so the apply would change nothing. Children of
    unwatched kinds (optional third-party CRDs) are sent again every UNWATCHED_RESEND_SECONDS.
    The prune lists are skipped while the desired set is the one last pruned against (at most
    PRUNE_RECHECK_SECONDS). Returns the objects applied."""
    memory = context().memory
    uid = owner["metadata"]["uid"]
    versions = memory.applied_versions.setdefault(uid, {})
    applied = []
    for child in children:
        ident, digest = identity(child), _digest(child)
        last = versions.get(ident)
        seen = memory.seen_versions.get((child["metadata"].get("namespace") or "", *ident))
        if last and last[1] == digest and (
                seen == last[0] if (ident[0], ident[1]) in memory.watched
                else time.monotonic() - last[2] < UNWATCHED_RESEND_SECONDS):
            continue  # the same manifest as our last apply, and nobody changed it since (or: not watched, sent lately)
        result = kube.apply(child)
        applied.append(result)
        APPLIED.labels(owner["kind"], child["kind"]).inc()
        content = _content(result)
        if not last or last[0] != content:  # we, or someone since our last apply, changed it
            _changed()
        versions[ident] = (content, digest, time.monotonic())
    if prune:
        wanted = frozenset({identity(c) for c in children} | set(keep))
        last_prune = memory.pruned_against.get(uid)
        if last_prune and last_prune[0] == wanted and time.monotonic() - last_prune[1] < PRUNE_RECHECK_SECONDS:
            return applied  # nothing left the desired set since the last prune
        for stale in owned_children(owner, prune):
            if identity(stale) not in wanted:
                log.info("pruning %s/%s: no longer desired", stale["kind"], stale["metadata"]["name"])
                kube.delete(stale["apiVersion"], stale["kind"], stale["metadata"]["name"],
                            stale["metadata"]["namespace"], {"propagationPolicy": "Background"})
                PRUNED.labels(owner["kind"], stale["kind"]).inc()
                versions.pop(identity(stale), None)
                _changed()
        memory.pruned_against[uid] = (wanted, time.monotonic())
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


def write_status(body: dict, status: StatusBase, wanted: list[conditions.Condition]) -> dict:
    """Write `status` and the `wanted` conditions through the status subresource, guarded by
    the resourceVersion `body` was read at (a 409 means someone wrote since: `run` decides
    again from a fresh read). The kind's status model is dumped by alias, so nothing the CRD's
    schema lacks is written. Stamps observedGeneration on status and on every condition, and
    keeps each condition's lastTransitionTime unless its status changes. Returns the object as
    written, to chain a second write within one step."""
    meta = body["metadata"]
    fields = status_body(body, status, wanted)
    if body.get("status") == fields:
        return body  # exactly what is there already: the write would change nothing
    written = kube.apply_status(body, fields)
    if written["metadata"].get("resourceVersion") != meta.get("resourceVersion"):
        _changed()
    _announce(body, (body.get("status") or {}).get("conditions") or [], fields["conditions"])
    return written


def status_body(body: dict, status: StatusBase, wanted: list[conditions.Condition]) -> dict:
    """The status `write_status` sends for `body`: the model with observedGeneration and the
    merged conditions, dumped by alias (camelCase, unset fields left out)."""
    generation = body["metadata"].get("generation", 1)
    merged = conditions.merge((body.get("status") or {}).get("conditions") or [], wanted, generation)
    stamped = status.model_copy(update={
        "observed_generation": generation, "conditions": [Condition.model_validate(c) for c in merged]})
    return stamped.model_dump(mode="json", by_alias=True, exclude_none=True)


def _invalid_spec_message(error: ValidationError) -> str:
    """Each failing field as `spec.<path>: <what is wrong>`."""
    lines = []
    for item in error.errors(include_url=False):
        path = ".".join(str(part) for part in ("spec", *item["loc"]))
        lines.append(f"{path}: {item['msg']}")
    return "; ".join(lines)[:1024]


def _report_invalid(body: dict, error: ValidationError, status_model: type[StatusBase]) -> None:
    """Ready=False/InvalidSpec with the fields at fault, and a Warning Event; the rest of the
    status and every child stay as they are. A stored status the model no longer accepts is
    not kept (it would not be written back as it is)."""
    message = _invalid_spec_message(error)
    stored = body.get("status") or {}
    try:
        status = status_model.model_validate(stored)
    except ValidationError:
        status = status_model()
    kept = [conditions.Condition(c.type, c.status == "True", c.reason, c.message or "")
            for c in status.conditions or [] if c.type != "Ready"]
    status = status.model_copy(update={"phase_reason": f"invalid spec: {message}"[:1024]})
    write_status(body, status, [conditions.Condition("Ready", False, "InvalidSpec", message), *kept])


def _waiting_after_invalid(memory: ReconcileMemory, key: Key, generation: int) -> bool:
    """Whether an object found invalid before is still inside its back-off window."""
    seen = memory.invalid.get(key)
    return bool(seen) and seen[0] == generation and time.monotonic() < seen[1]


def _remember_invalid(memory: ReconcileMemory, key: Key, generation: int) -> None:
    seen = memory.invalid.get(key)
    delay = INVALID_FIRST_DELAY if not seen or seen[0] != generation else min(seen[2] * 2, INVALID_MAX_DELAY)
    memory.invalid[key] = (generation, time.monotonic() + delay, delay)


def run(ctx: Context, kind: Kind, body: dict, trigger: str, resync: bool = False) -> None:
    """Reconcile one object: read it fresh, parse its spec once, run the kind's step. A lost
    status race is decided again from a fresh read. A trigger that finds another one already
    waiting for the same object returns at once: that one reads the object after this change.
    `resync`: no event asked for this (see `Resync` and `_reconcile`)."""
    memory = ctx.memory
    meta = body["metadata"]
    key = (kind.name, meta["namespace"], meta["name"])
    with memory.queued_lock:
        if key in memory.queued:
            return
        memory.queued.add(key)
        lock = memory.locks[key]
    try:
        waited = not lock.acquire(blocking=False)
        if waited:
            lock.acquire()
    finally:
        with memory.queued_lock:
            memory.queued.discard(key)
    token = _current.set(ctx)
    try:
        # After a wait, `body` may predate a change whose trigger returned at once: read fresh.
        _run_locked(memory, kind, body, trigger, key, resync, cached=resync and not waited)
    finally:
        _current.reset(token)
        lock.release()


def resync_in(ctx: Context, kind: Kind, key: Key, body: dict, since: float) -> float:
    """Seconds until the object's next resync, counted from its last reconcile (or `since`):
    see `Resync`."""
    policy = kind.resync
    seconds = policy.base_seconds(ctx.settings)
    quiet, last = ctx.memory.quiet.get(key, (0, since))
    last = max(last, since)
    if policy.following(body):
        period = policy.follow_seconds or seconds
    else:
        period = min(seconds * RESYNC_BACKOFF ** min(quiet, 8), max(seconds, policy.max_seconds))
    return last + period - time.monotonic()


def _run_locked(memory: ReconcileMemory, kind: Kind, body: dict, trigger: str, key: Key, resync: bool,
                cached: bool) -> None:
    """Reconcile, then count the object's quiet resyncs: one that changed nothing adds one; any
    change, an error, or a state the kind follows starts again from zero."""
    memory.changes.seen = False
    try:
        fresh = _reconcile(memory, kind, body, trigger, key, cached)
    except BaseException:
        memory.quiet[key] = (0, time.monotonic())
        raise
    if fresh is None:
        return
    quiet = memory.quiet.get(key, (0, 0.0))[0]
    if memory.changes.seen or kind.resync.following(fresh):
        quiet = 0
    elif resync:
        quiet += 1
    memory.quiet[key] = (quiet, time.monotonic())


def _reconcile(memory: ReconcileMemory, kind: Kind, body: dict, trigger: str, key: Key,
               cached: bool) -> dict | None:
    """The object as read before its step, or None when it is gone.

    `cached`: start from `body` as the watch last delivered it (a resync's), not a read; if it
    is stale, its guarded status write fails with 409 and the next attempt reads fresh."""
    meta = body["metadata"]
    with observed(kind.name, trigger):
        for attempt in range(CONFLICT_ATTEMPTS):
            if attempt == 0 and cached:
                fresh = body
            else:
                fresh = kube.get(body["apiVersion"], kind.name, meta["name"], meta["namespace"])
            if fresh is None or fresh["metadata"].get("deletionTimestamp"):
                memory.forget(key, (fresh or body)["metadata"].get("uid"))
                return None
            generation = fresh["metadata"].get("generation", 1)
            if _waiting_after_invalid(memory, key, generation):
                return fresh
            try:
                try:
                    spec = kind.spec_model.model_validate(fresh.get("spec") or {})
                except ValidationError as error:
                    _remember_invalid(memory, key, generation)
                    _report_invalid(fresh, error, kind.status_model)
                    return fresh
                memory.invalid.pop(key, None)
                kind.step(fresh, spec)
                return fresh
            except kube.Conflict:
                log.info("status of %s/%s changed while reconciling: deciding again", *key[1:])
            except kube.Forbidden as error:
                # The namespace is being deleted: its objects go away with it, nothing to repair.
                if "NamespaceTerminating" not in str(error.body):
                    raise
                return None
        raise kopf.TemporaryError(f"status kept changing under {trigger}", delay=5)

"""Outbox relay and projection worker: poll loops that are safe to run in many processes.

Each worker role runs one thread per shard under a supervisor, so a stalled or broken shard
delays only its own events. A failing step is retried with exponential backoff, reported
(`/readyz`, `pim_worker_up`, `pim_worker_failures_total`) with the shard and the cause, and the
thread carries on by itself once the cause is gone; a thread that dies is restarted.

Relay: claim a batch of unpublished outbox rows (a lease, so a crashed relay's claim expires),
append them to the shard's event stream (idempotent by event_id), mark them published.
Projection: apply each stream event to the KPIs and record its id in `processed_events` in the
same transaction, so every event counts exactly once whatever crashes or duplicates happen.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time

import sqlalchemy as sa

from api_services.audit import now_iso
from api_services.domain import kpis
from api_services.group_commit import transact
from api_services.prepared import prebuilt
from api_services.tables import event_stream, outbox, processed_events
from api_services.telemetry import OUTBOX_PUBLISHED, PROJECTED, WORKER_FAILURES, WORKER_RESTARTS, tracer
from api_services.transactions import purge_expired_keys

log = logging.getLogger("pim.workers")
CONSUMER = "financial-kpis"
BATCH = 500
REORDER_WINDOW = 1000  # positions re-checked below the checkpoint (identity commit order may differ)


def worker_id(role: str) -> str:
    return f"{role}:{socket.gethostname()}:{os.getpid()}"


# The workers' statements, built once; `prebuilt` ones run on the SQLite driver directly inside a
# group commit (api_services/prepared.py), the expanding IN list through SQLAlchemy.
_PENDING = prebuilt(sa.select(outbox).where(outbox.c.published_at.is_(None)).order_by(outbox.c.id)
                    .limit(sa.bindparam("batch")).with_hint(outbox, "WITH (UPDLOCK, READPAST, ROWLOCK)",
                                                            dialect_name="mssql"))
_KNOWN = sa.select(event_stream.c.event_id).where(event_stream.c.event_id.in_(sa.bindparam("ids", expanding=True)))
_APPEND = prebuilt(event_stream.insert())
_PUBLISHED = prebuilt(outbox.update().where(outbox.c.id == sa.bindparam("row_id"), outbox.c.published_at.is_(None))
                      .values(published_at=sa.bindparam("ts"), claimed_by=sa.bindparam("me"),
                              claimed_at=sa.bindparam("at")))


def relay_once(engine, shard: str, me: str, batch: int = BATCH) -> int:
    """Move a batch of unpublished outbox rows to the event stream in ONE transaction.

    Select, append (idempotent by event_id) and mark published commit together or not at all,
    so a relay killed at any instant leaves every row either published-and-appended or plainly
    pending for the next relay, never "claimed" by a dead process (a claim committed apart from
    the publish would strand the rows a kill -9 left claimed until a lease expired). Concurrent
    relays are serialised by the write lock (SQLite BEGIN IMMEDIATE) or skip each other's locked
    rows (SQL Server UPDLOCK/READPAST); event_id uniqueness backs both.
    `claimed_by`/`claimed_at` record which relay published a row, and when.
    On a group-committed SQLite shard the step is one write of the shard's next group commit,
    so it shares that commit's fsync with the request writes instead of paying its own.
    """

    def publish(conn) -> int:
        rows = conn.execute(_PENDING, {"batch": batch}).all()
        if not rows:
            return 0
        with tracer().start_as_current_span("outbox.relay", attributes={"pim.shard": shard, "pim.batch": len(rows)}):
            return _append(conn, rows, me)

    moved = transact(engine, publish)
    if moved:
        OUTBOX_PUBLISHED.labels(shard).inc(moved)
    return moved


def _append(conn, rows: list, me: str) -> int:
    known = set(conn.execute(_KNOWN, {"ids": [r.event_id for r in rows]}).scalars())
    ts = now_iso()
    fresh = [{"event_id": r.event_id, "event_type": r.event_type, "payload": r.payload,
              "published_at": ts} for r in rows if r.event_id not in known]
    if fresh:
        conn.execute(_APPEND, fresh)
    at = time.time()
    conn.execute(_PUBLISHED, [{"row_id": r.id, "ts": ts, "me": me, "at": at} for r in rows])
    return len(rows)


_CHECKPOINT = prebuilt(sa.select(sa.func.max(processed_events.c.position))
                       .where(processed_events.c.consumer == CONSUMER))
_UNPROCESSED = prebuilt(sa.select(event_stream)
                        .where(event_stream.c.position > sa.bindparam("floor"),
                               ~sa.exists(sa.select(processed_events.c.event_id)
                                          .where(processed_events.c.consumer == CONSUMER,
                                                 processed_events.c.event_id == event_stream.c.event_id)))
                        .order_by(event_stream.c.position).limit(sa.bindparam("batch")))
_MARK_PROCESSED = prebuilt(processed_events.insert())


def reorder_window(conn) -> int:
    """Positions re-checked below the checkpoint. A server database assigns identity values
    before commit, so a lower position can become visible after a higher one was projected;
    SQLite's writers hold the file's write lock from BEGIN to COMMIT, so its positions become
    visible in order and nothing below the checkpoint can appear later (skipping the re-check
    there halves the projection's SQLite time)."""
    return 0 if conn.dialect.name == "sqlite" else REORDER_WINDOW


def project_once(engine, shard: str, batch: int = BATCH) -> int:
    """Apply a batch of stream events to the KPIs, exactly once: the ledger rows (one executemany)
    and the batch's summed KPI deltas (one update per KPI) commit together (on a group-committed
    SQLite shard, as one write of its next group commit)."""
    def apply(conn) -> dict[str, int]:
        checkpoint = conn.execute(_CHECKPOINT).scalar() or 0
        rows = conn.execute(_UNPROCESSED, {"floor": checkpoint - reorder_window(conn), "batch": batch}).all()
        if not rows:
            return {}
        with tracer().start_as_current_span("projection.apply", attributes={"pim.shard": shard, "pim.batch": len(rows)}):
            return _project(conn, rows)

    projected = transact(engine, apply)
    for event_type, n in projected.items():
        PROJECTED.labels(shard, event_type).inc(n)
    return sum(projected.values())


def _project(conn, rows: list) -> dict[str, int]:
    """Ledger rows and summed KPI deltas for `rows`; the number of events of each type."""
    ts = now_iso()
    conn.execute(_MARK_PROCESSED, [{"consumer": CONSUMER, "event_id": row.event_id, "position": row.position,
                                    "processed_at": ts} for row in rows])
    totals: dict[str, int] = {}
    types: dict[str, int] = {}
    for row in rows:
        for kpi, delta in kpis.deltas(row.event_type, json.loads(row.payload)).items():
            totals[kpi] = totals.get(kpi, 0) + delta
        types[row.event_type] = types.get(row.event_type, 0) + 1
    kpis.apply(conn, totals)
    return types


def pipeline_counts(engine) -> tuple[int, int | None]:
    """(outbox rows not yet relayed, stream events not yet projected or None when unreadable),
    read from the shard; the pending count never depends on the stream being readable."""
    with engine.connect() as conn:
        pending = conn.execute(sa.select(sa.func.count()).select_from(outbox)
                               .where(outbox.c.published_at.is_(None))).scalar_one()
    try:
        with engine.connect() as conn:
            published = conn.execute(sa.select(sa.func.count()).select_from(event_stream)).scalar_one()
            projected = conn.execute(sa.select(sa.func.count()).select_from(processed_events)
                                     .where(processed_events.c.consumer == CONSUMER)).scalar_one()
    except Exception:  # e.g. the stream table is gone: the workers report why
        return int(pending), None
    return int(pending), max(0, int(published) - int(projected))


def reason_kind(text: str) -> str:
    """A bounded label for a failure's cause (the full text is in /readyz and the logs)."""
    low = text.lower()
    for needle, kind in (("cannot open", "cannot_open"), ("unable to open", "cannot_open"), ("locked", "locked"),
                         ("busy", "locked"), ("no such table", "schema"), ("no such column", "schema"),
                         ("not configured", "not_configured"), ("timeout", "timeout")):
        if needle in low:
            return kind
    return "error"


def describe_failure(exc: BaseException) -> str:
    """The cause in words for /readyz: the store's own message, never an exception class name."""
    message = getattr(exc, "message", None)  # ApiError (e.g. shard unavailable)
    if message:
        return str(message)[:200]
    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc).strip().splitlines()
    return (text[0] if text else "unknown error")[:200]


class ShardWorker(threading.Thread):
    """One role on one shard: `step(engine, shard)` whenever there may be work, with backoff while it fails.

    Event-driven, not a hot poll: after a step that found nothing the worker sleeps until a write
    commits on the shard (`Engines.changes`, bumped by request writes and by the other role's
    steps) or, for writers in other processes, until an idle timeout that doubles up to
    `IDLE_MAX` seconds. After a step that moved a partial batch it waits `interval` so events
    accumulate into fewer, larger transactions (each an fsync under the shard's write lock)."""

    BACKOFF_MAX = 5.0
    IDLE_MAX = 2.0

    def __init__(self, role: str, shard: str, runtime, step, interval: float, batch: int = BATCH):
        super().__init__(name=f"{role}:{shard}", daemon=True)
        self.role, self.shard, self.runtime, self.step = role, shard, runtime, step
        self.interval, self.batch = interval, batch
        self.stop_event = threading.Event()

    def run(self) -> None:
        health = self.runtime.worker_health
        changes = self.runtime.engines.changes(self.shard)
        backoff, idle = self.interval, self.interval
        while not self.stop_event.is_set():
            seen = changes.generation
            try:
                moved = self.step(self.runtime.engines.write(self.shard), self.shard)
                health.ok(self.role, self.shard)
                backoff = self.interval
            except Exception as exc:  # reported and retried: a worker never dies of a shard's fault
                reason = describe_failure(exc)
                health.failed(self.role, self.shard, reason)
                WORKER_FAILURES.labels(self.role, self.shard, reason_kind(reason)).inc()
                log.warning("worker step failed; retrying with backoff",
                            extra={"worker": self.role, "shard_name": self.shard, "reason": reason,
                                   "retry_in_s": round(backoff, 2)})
                self.stop_event.wait(backoff)
                backoff = min(self.BACKOFF_MAX, backoff * 2)
                continue
            if moved:
                changes.bump()  # the relay's appends are the projection's work, and so on
                idle = self.interval
                if moved < self.batch:
                    self.stop_event.wait(self.interval)
            else:
                changes.wait(seen, idle)
                idle = min(self.IDLE_MAX, idle * 2)

    def stop(self) -> None:
        self.stop_event.set()
        self.runtime.engines.changes(self.shard).bump()  # out of its wait at once


class WorkerPool(threading.Thread):
    """The supervisor of one role: a ShardWorker per shard in the current map, restarted if it
    dies, added and removed as the map changes. `is_alive()` is the role's liveness."""

    def __init__(self, name: str, runtime, step, interval: float, batch: int = BATCH, every: float = 0.5):
        super().__init__(name=name, daemon=True)
        self.runtime, self.step, self.interval, self.batch, self.every = runtime, step, interval, batch, every
        self.stop_event = threading.Event()
        self.workers: dict[str, ShardWorker] = {}

    def _reconcile(self) -> None:
        wanted = set(self.runtime.shard_names())
        for shard in sorted(wanted):
            current = self.workers.get(shard)
            if current is not None and current.is_alive():
                continue
            if current is not None:
                WORKER_RESTARTS.labels(self.name).inc()
                log.error("worker thread died; restarting", extra={"worker": self.name, "shard_name": shard})
            worker = ShardWorker(self.name, shard, self.runtime, self.step, self.interval, self.batch)
            self.workers[shard] = worker
            worker.start()
        for shard in sorted(set(self.workers) - wanted):
            self.workers.pop(shard).stop()
            self.runtime.worker_health.forget(self.name, shard)

    def run(self) -> None:
        while not self.stop_event.is_set():
            try:
                self._reconcile()
            except Exception:  # a bad moment (e.g. map reload) must not end supervision
                log.exception("worker supervision step failed", extra={"worker": self.name})
            self.stop_event.wait(self.every)
        for worker in self.workers.values():
            worker.stop()

    def stop(self) -> None:
        self.stop_event.set()

    def join(self, timeout: float | None = None) -> None:
        super().join(timeout)
        for worker in list(self.workers.values()):
            worker.join(timeout)


PURGE_EVERY_SECONDS = 60.0


def _relay_step(me: str, ttl_seconds: float):
    """The relay's step: publish a batch, and purge expired idempotency keys once a minute."""
    last_purge: dict[str, float] = {}

    def step(engine, shard: str) -> int:
        moved = relay_once(engine, shard, me)
        now = time.monotonic()
        if now - last_purge.get(shard, 0.0) >= PURGE_EVERY_SECONDS:
            purge_expired_keys(engine, ttl_seconds)
            last_purge[shard] = now
        return moved

    return step


def start_workers(runtime, roles: set[str]) -> list[WorkerPool]:
    loops = []
    if "outbox-relay" in roles:
        loops.append(WorkerPool("outbox-relay", runtime,
                                _relay_step(worker_id("relay"), runtime.settings.idempotency_ttl_seconds),
                                runtime.settings.worker_poll_seconds))
    if "projection-worker" in roles:
        loops.append(WorkerPool("projection-worker", runtime, project_once, runtime.settings.worker_poll_seconds))
    for loop in loops:
        loop.start()
    return loops

"""Outbox relay and projection worker: poll loops that are safe to run in many processes.

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
from sqlalchemy.exc import IntegrityError, OperationalError

from api_services.audit import now_iso
from api_services.db import event_stream, outbox, processed_events
from api_services.domain import kpis
from api_services.telemetry import OUTBOX_PENDING, OUTBOX_PUBLISHED, PROJECTED, PROJECTION_LAG, tracer

log = logging.getLogger("pim.workers")
CONSUMER = "financial-kpis"
BATCH = 500
REORDER_WINDOW = 1000  # positions re-checked below the checkpoint (identity commit order may differ)


def worker_id(role: str) -> str:
    return f"{role}:{socket.gethostname()}:{os.getpid()}"


def relay_once(engine, shard: str, me: str, batch: int = BATCH) -> int:
    """Move a batch of unpublished outbox rows to the event stream in ONE transaction.

    Select, append (idempotent by event_id) and mark published commit together or not at all,
    so a relay killed at any instant leaves every row either published-and-appended or plainly
    pending for the next relay, never "claimed" by a dead process. (The former claim-then-publish
    in two transactions stranded rows claimed just before a kill -9 until their 30 s lease
    expired.) Concurrent relays are serialised by the write lock (SQLite BEGIN IMMEDIATE) or skip
    each other's locked rows (SQL Server UPDLOCK/READPAST); event_id uniqueness backs both.
    `claimed_by`/`claimed_at` now only record which relay published a row, and when.
    """
    with tracer().start_as_current_span("outbox.relay", attributes={"pim.shard": shard}) as span:
        with engine.begin() as conn:
            rows = conn.execute(
                sa.select(outbox).where(outbox.c.published_at.is_(None)).order_by(outbox.c.id).limit(batch)
                .with_hint(outbox, "WITH (UPDLOCK, READPAST, ROWLOCK)", dialect_name="mssql")).mappings().all()
            if not rows:
                OUTBOX_PENDING.labels(shard).set(0)
                return 0
            span.set_attribute("pim.batch", len(rows))
            known = set(conn.execute(sa.select(event_stream.c.event_id)
                                     .where(event_stream.c.event_id.in_([r["event_id"] for r in rows]))).scalars())
            ts = now_iso()
            fresh = [{"event_id": r["event_id"], "event_type": r["event_type"], "payload": r["payload"],
                      "published_at": ts} for r in rows if r["event_id"] not in known]
            if fresh:
                conn.execute(event_stream.insert(), fresh)
            conn.execute(outbox.update().where(outbox.c.id.in_([r["id"] for r in rows]),
                                               outbox.c.published_at.is_(None))
                         .values(published_at=ts, claimed_by=me, claimed_at=time.time()))
            remaining = 0 if len(rows) < batch else conn.execute(
                sa.select(sa.func.count()).select_from(outbox).where(outbox.c.published_at.is_(None))).scalar_one()
    OUTBOX_PUBLISHED.labels(shard).inc(len(rows))
    OUTBOX_PENDING.labels(shard).set(remaining)
    return len(rows)


def project_once(engine, shard: str, batch: int = BATCH) -> int:
    with engine.begin() as conn:
        checkpoint = conn.execute(sa.select(sa.func.max(processed_events.c.position))
                                  .where(processed_events.c.consumer == CONSUMER)).scalar() or 0
        done = sa.select(processed_events.c.event_id).where(processed_events.c.consumer == CONSUMER,
                                                            processed_events.c.event_id == event_stream.c.event_id)
        rows = conn.execute(sa.select(event_stream)
                            .where(event_stream.c.position > checkpoint - REORDER_WINDOW, ~sa.exists(done))
                            .order_by(event_stream.c.position).limit(batch)).mappings().all()
        if not rows:
            PROJECTION_LAG.labels(shard).set(0)
            return 0
        with tracer().start_as_current_span("projection.apply", attributes={"pim.shard": shard,
                                                                            "pim.batch": len(rows)}):
            ts = now_iso()
            for row in rows:
                conn.execute(processed_events.insert().values(consumer=CONSUMER, event_id=row["event_id"],
                                                              position=row["position"], processed_at=ts))
                kpis.apply(conn, kpis.deltas(row["event_type"], json.loads(row["payload"])))
                PROJECTED.labels(shard, row["event_type"]).inc()
        last = conn.execute(sa.select(sa.func.max(event_stream.c.position))).scalar() or 0
    PROJECTION_LAG.labels(shard).set(max(0, last - rows[-1]["position"]))
    return len(rows)


class PollLoop(threading.Thread):
    """Runs `step(engine, shard)` over every shard until stopped; errors are logged, not fatal."""

    def __init__(self, name: str, runtime, step, interval: float, batch: int = BATCH):
        super().__init__(name=name, daemon=True)
        self.runtime, self.step, self.interval, self.batch = runtime, step, interval, batch
        self.stop_event = threading.Event()
        self.last_success = 0.0

    def run(self) -> None:
        while not self.stop_event.is_set():
            busy = False
            for shard in self.runtime.shard_names():
                try:
                    # Only a full batch means a backlog worth looping for at once; otherwise wait the
                    # interval so events accumulate into fewer, larger transactions (each one is an
                    # fsync under the shard's write lock, in the way of request writes).
                    busy |= self.step(self.runtime.engines.write(shard), shard) >= self.batch
                    self.last_success = time.monotonic()
                except (IntegrityError, OperationalError) as exc:
                    log.warning("worker step retried", extra={"worker": self.name, "shard_name": shard,
                                                              "error_type": type(exc).__name__})
                except Exception:
                    log.exception("worker step failed", extra={"worker": self.name, "shard_name": shard})
            if not busy:
                self.stop_event.wait(self.interval)

    def stop(self) -> None:
        self.stop_event.set()


def start_workers(runtime, roles: set[str]) -> list[PollLoop]:
    loops = []
    if "outbox-relay" in roles:
        me = worker_id("relay")
        loops.append(PollLoop("outbox-relay", runtime, lambda e, s: relay_once(e, s, me),
                              runtime.settings.worker_poll_seconds))
    if "projection-worker" in roles:
        loops.append(PollLoop("projection-worker", runtime, project_once, runtime.settings.worker_poll_seconds))
    for loop in loops:
        loop.start()
    return loops

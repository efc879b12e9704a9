"""Group commit for SQLite shards, and the one call every request write goes through.

A SQLite shard has one writer at a time and each COMMIT with `synchronous=FULL` is an fsync.
`GroupCommitWrites` keeps one writer thread per shard: it takes every write queued while the
previous commit ran, runs each in its own SAVEPOINT inside one `BEGIN IMMEDIATE ... COMMIT`,
and answers the callers only after that COMMIT returned (the fsync that covers them). A write
that fails rolls back to its savepoint only; the others in the batch commit. Each write is still
one atomic unit with its row, history, audit link, outbox event and idempotency record, and the
audit chain stays linear because the batch runs the writes one after the other on one connection.

PostgreSQL and SQL Server keep plain transactions (`transact` below): their servers already
overlap the flushes of concurrent commits.
"""

from __future__ import annotations

import contextvars
import logging
import threading
from collections import deque
from typing import Callable

from api_services.db import SerializedWrites
from api_services.errors import Unavailable
from api_services.telemetry import GROUP_COMMIT_WRITES

log = logging.getLogger("pim.group_commit")


class Changes:
    """A per-shard count of committed writes that background workers sleep on (wake on write)."""

    def __init__(self):
        self._cond = threading.Condition()
        self.generation = 0

    def bump(self) -> None:
        with self._cond:
            self.generation += 1
            self._cond.notify_all()

    def wait(self, seen: int, timeout: float) -> None:
        """Until a write after `seen` committed, or `timeout` seconds."""
        with self._cond:
            self._cond.wait_for(lambda: self.generation != seen, timeout)


class _Job:
    """One caller's write; it runs in the caller's context (request id, user, trace parent)."""

    __slots__ = ("fn", "context", "done", "result", "error", "state")

    def __init__(self, fn: Callable):
        self.fn, self.context = fn, contextvars.copy_context()
        self.done, self.result, self.error, self.state = threading.Event(), None, None, "queued"


class GroupCommitWrites(SerializedWrites):
    """A SQLite write engine whose request writes are group-committed by one thread per shard.

    `begin()` (seeding, relay, projection, refusal audit) is unchanged: it queues on the same
    in-process lock the writer holds for each batch, so the two never meet at SQLite's busy handler.
    """

    MAX_BATCH = 128

    def __init__(self, engine, name: str = "", acquire_seconds: float = 30.0):
        super().__init__(engine, name, acquire_seconds)
        self._batch_size = GROUP_COMMIT_WRITES.labels(name)
        self._queue: deque[_Job] = deque()
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._conn = None

    def transact(self, fn: Callable):
        """`fn(conn)` in its own savepoint of the next group commit; its result once durable."""
        job = _Job(fn)
        with self._wake:
            if self._stopping:
                raise Unavailable(f"shard {self.name} is shutting down; retry later", "shard_unavailable",
                                  headers={"Retry-After": "1"})
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=f"group-commit:{self.name}", daemon=True)
                self._thread.start()
            self._queue.append(job)
            self._wake.notify()
        if not job.done.wait(self.acquire_seconds):
            with self._wake:
                if job.state == "queued":  # never started: safe to give up
                    job.state = "abandoned"
                    raise Unavailable(f"shard {self.name} is busy (its write was not started within "
                                      f"{self.acquire_seconds:g} s); retry later", "shard_unavailable",
                                      headers={"Retry-After": "1"})
            job.done.wait()  # started: its outcome is decided by the commit in flight
        if job.error is not None:
            raise job.error
        return job.result

    def _run(self) -> None:
        while True:
            with self._wake:
                self._wake.wait_for(lambda: self._queue or self._stopping)
                if self._stopping and not self._queue:
                    return
                batch = []
                while self._queue and len(batch) < self.MAX_BATCH:
                    job = self._queue.popleft()
                    if job.state == "queued":
                        job.state = "running"
                        batch.append(job)
            if batch:
                self._commit(batch)

    def _commit(self, batch: list[_Job]) -> None:
        try:
            with self.lock:
                if self._conn is None:
                    self._conn = self.engine.connect()
                conn = self._conn
                raw = conn.connection.dbapi_connection
                with conn.begin():  # BEGIN IMMEDIATE (the engine's begin hook)
                    for job in batch:
                        if not raw.in_transaction:  # SQLite rolled the whole transaction back (I/O error, full disk)
                            raise Unavailable(f"shard {self.name} rolled the transaction back; retry with the "
                                              "same Idempotency-Key", "shard_unavailable",
                                              headers={"Retry-After": "1"})
                        savepoint = conn.begin_nested()
                        try:
                            job.result = job.context.run(job.fn, conn)
                        except BaseException as exc:  # only this write is undone
                            job.error = exc
                            if raw.in_transaction:
                                savepoint.rollback()
                        else:
                            savepoint.commit()
            self._batch_size.observe(len(batch))
        except BaseException as exc:  # BEGIN or COMMIT failed: nothing in the batch is durable
            log.warning("group commit failed", extra={"shard_name": self.name, "writes": len(batch),
                                                      "error_type": type(exc).__name__})
            for job in batch:
                if job.error is None:  # a write that failed by itself keeps its own answer
                    job.error, job.result = exc, None
            self._drop_connection()
        finally:
            for job in batch:
                job.done.set()

    def _drop_connection(self) -> None:
        if self._conn is not None:
            try:
                self._conn.invalidate()
                self._conn.close()
            except Exception:
                pass
            self._conn = None

    def dispose(self) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=self.acquire_seconds)
        with self.lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
        self.engine.dispose()


def transact(engine, fn: Callable):
    """`fn(conn)` as one write transaction on `engine`: group-committed where the engine does it,
    a plain transaction otherwise (PostgreSQL, SQL Server, serialized SQLite)."""
    if isinstance(engine, GroupCommitWrites):
        return engine.transact(fn)
    with engine.begin() as conn:
        return fn(conn)

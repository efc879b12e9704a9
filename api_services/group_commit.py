"""How a shard's writes are serialized (one at a time, or group-committed), and the one call every
request write goes through.

`SerializedWrites` queues a SQLite shard's writers on an in-process lock, one transaction each.

A shard's COMMIT is its expensive part: with SQLite and `synchronous=FULL` an fsync of the WAL;
with PostgreSQL the wait until the synchronous standbys have the commit. And a shard's writes
are serialized anyway, by SQLite's one writer or by the audit chain's head row, which each write
locks until it commits. `GroupCommitWrites` keeps one writer thread per shard: it takes every
write queued while the previous commit ran, runs each in its own SAVEPOINT inside one
transaction, and answers the callers only after that COMMIT returned (the fsync, or the quorum's
acknowledgement, that covers them). A write that fails rolls back to its savepoint only; the
others in the batch commit. Each write is still one atomic unit with its row, history, audit
link, outbox event and idempotency record, and the audit chain stays linear because the batch
runs the writes one after the other on one connection.

On SQLite each write gets a `DriverConnection` (api_services/prepared.py): its prebuilt
statements and its savepoint run on the sqlite3 connection directly, without SQLAlchemy's
per-statement work. On PostgreSQL the batch is one bounded, quorum-acknowledged transaction of
`QuorumWrites` (api_services/engines.py) and each write gets its SQLAlchemy connection; a batch whose
COMMIT is not acknowledged in time fails as a whole, so none of its writes is acknowledged.
SQL Server keeps plain transactions (`transact` below). An async caller (`transact_async`) waits
on an asyncio future the writer resolves, so a request needs no threadpool thread: event loop ->
writer -> event loop.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
from collections import deque
from contextlib import contextmanager
from typing import Callable

from sqlalchemy.engine import Engine
from starlette.concurrency import run_in_threadpool

from api_services.errors import Unavailable
from api_services.prepared import DriverConnection
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


class SerializedWrites:
    """A SQLite write engine whose transactions queue on an in-process lock before BEGIN IMMEDIATE.

    SQLite admits one writer per file anyway; racing for the file lock instead would put the
    losers to sleep in SQLite's busy handler (1, 2, 5, 10 ... 100 ms back-off), most of a
    booking's latency under load. Queueing on a lock wakes the next writer the moment the
    previous one commits. Other processes (a separate relay) meet at the file lock, with the busy
    timeout. Everything else is the engine's.
    """

    def __init__(self, engine: Engine, name: str = "", acquire_seconds: float = 30.0):
        self.engine = engine
        self.name = name
        self.acquire_seconds = acquire_seconds
        self.lock = threading.Lock()

    @contextmanager
    def begin(self):
        """Bounded: a writer that cannot get the shard within `acquire_seconds` gets 503, not a hang."""
        if not self.lock.acquire(timeout=self.acquire_seconds):
            raise Unavailable(f"shard {self.name} is busy (its write lock was not acquired within "
                              f"{self.acquire_seconds:g} s); retry later", "shard_unavailable",
                              headers={"Retry-After": "1"})
        try:
            with self.engine.begin() as conn:
                yield conn
        finally:
            self.lock.release()

    def __getattr__(self, name):
        return getattr(self.engine, name)


class _Job:
    """One caller's write; it runs in the caller's context (request id, user, trace parent).
    A thread caller waits on `done`; an async caller on `future`, resolved on its `loop`."""

    __slots__ = ("fn", "context", "done", "result", "error", "state", "loop", "future")

    def __init__(self, fn: Callable, loop: asyncio.AbstractEventLoop | None = None):
        self.fn, self.context = fn, contextvars.copy_context()
        self.result, self.error, self.state = None, None, "queued"
        self.loop = loop
        if loop is None:
            self.done, self.future = threading.Event(), None
        else:
            self.done, self.future = None, loop.create_future()


def _settle(jobs: list[_Job]) -> None:
    """On the callers' event loop: hand each async caller its outcome."""
    for job in jobs:
        if not job.future.done():
            if job.error is not None:
                job.future.set_exception(job.error)
            else:
                job.future.set_result(job.result)


class GroupCommitWrites(SerializedWrites):
    """A shard's write engine (SQLite, or PostgreSQL's `QuorumWrites`) whose writes through
    `transact` are group-committed by one thread per shard.

    `begin()` (seeding, refusal audit, idempotency home records) is unchanged: it queues on the
    same in-process lock the writer holds for each batch, so the two never meet at SQLite's busy
    handler.
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
        self._driver: DriverConnection | None = None
        self._plans: dict = {}  # the prebuilt statements compiled for this shard's driver
        self._sqlite = engine.dialect.name == "sqlite"

    def _enqueue(self, job: _Job) -> None:
        with self._wake:
            if self._stopping:
                raise Unavailable(f"shard {self.name} is shutting down; retry later", "shard_unavailable",
                                  headers={"Retry-After": "1"})
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=f"group-commit:{self.name}", daemon=True)
                self._thread.start()
            self._queue.append(job)
            self._wake.notify()

    def _busy(self) -> Unavailable:
        return Unavailable(f"shard {self.name} is busy (its write was not started within "
                           f"{self.acquire_seconds:g} s); retry later", "shard_unavailable",
                           headers={"Retry-After": "1"})

    def transact(self, fn: Callable):
        """`fn(conn)` in its own savepoint of the next group commit; its result once durable."""
        job = _Job(fn)
        self._enqueue(job)
        if not job.done.wait(self.acquire_seconds):
            with self._wake:
                if job.state == "queued":  # never started: safe to give up
                    job.state = "abandoned"
                    raise self._busy()
            job.done.wait()  # started: its outcome is decided by the commit in flight
        if job.error is not None:
            raise job.error
        return job.result

    async def transact_async(self, fn: Callable):
        """`transact` for a caller on an event loop: awaits the commit without holding a thread."""
        job = _Job(fn, asyncio.get_running_loop())
        self._enqueue(job)

        def give_up() -> None:  # on the loop, after acquire_seconds: only a write never started
            with self._wake:
                if job.state == "queued":
                    job.state = "abandoned"
                    if not job.future.done():
                        job.future.set_exception(self._busy())

        timer = job.loop.call_later(self.acquire_seconds, give_up)
        try:
            return await job.future
        finally:
            timer.cancel()

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
                if self._sqlite:
                    self._commit_on_driver(batch)
                else:
                    self._commit_on_server(batch)
            self._batch_size.observe(len(batch))
        except BaseException as exc:  # BEGIN or COMMIT failed: nothing in the batch is durable
            log.warning("group commit failed", extra={"shard_name": self.name, "writes": len(batch),
                                                      "error_type": type(exc).__name__})
            for job in batch:
                if job.error is None:  # a write that failed by itself keeps its own answer
                    job.error, job.result = exc, None
            self._drop_connection()
        finally:
            by_loop: dict = {}
            for job in batch:
                if job.loop is None:
                    job.done.set()
                else:
                    by_loop.setdefault(job.loop, []).append(job)
            for loop, jobs in by_loop.items():  # one wake-up per loop and batch, not per write
                try:
                    loop.call_soon_threadsafe(_settle, jobs)
                except RuntimeError:  # the loop is closed: nobody waits any more
                    pass

    def _commit_on_server(self, batch: list[_Job]) -> None:
        """One transaction of the server's write engine (bounded, acknowledged by the quorum on
        PostgreSQL); SQLAlchemy's nested transactions are the savepoints."""
        with self.engine.begin() as conn:
            for job in batch:
                savepoint = conn.begin_nested()
                try:
                    job.result = job.context.run(job.fn, conn)
                except BaseException as exc:  # only this write is undone
                    job.error = exc
                    if conn.invalidated:  # the connection is lost: the batch fails, every write with this error
                        raise
                    savepoint.rollback()
                else:
                    savepoint.commit()

    def _commit_on_driver(self, batch: list[_Job]) -> None:
        """BEGIN IMMEDIATE ... COMMIT and the savepoints on the sqlite3 connection, kept open."""
        if self._conn is None:
            self._conn = self.engine.connect()
            self._driver = DriverConnection(self._conn, self._plans)
        driver = self._driver
        raw = driver.raw
        with driver.transaction():  # BEGIN IMMEDIATE ... COMMIT, on the driver
            for job in batch:
                if not raw.in_transaction:  # SQLite rolled the whole transaction back (I/O error, full disk)
                    raise Unavailable(f"shard {self.name} rolled the transaction back; retry with the "
                                      "same Idempotency-Key", "shard_unavailable",
                                      headers={"Retry-After": "1"})
                driver.savepoint()
                try:
                    job.result = job.context.run(job.fn, driver)
                except BaseException as exc:  # only this write is undone
                    job.error = exc
                    if raw.in_transaction:
                        driver.rollback_savepoint()
                else:
                    driver.release()

    def _drop_connection(self) -> None:
        if self._conn is not None:
            try:
                self._conn.invalidate()
                self._conn.close()
            except Exception:
                pass
            self._conn = self._driver = None

    def dispose(self) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=self.acquire_seconds)
        with self.lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = self._driver = None
        self.engine.dispose()


async def transact_async(engine, fn: Callable):
    """`transact` from an event loop: the group-commit writer directly, or a threadpool thread."""
    if isinstance(engine, GroupCommitWrites):
        return await engine.transact_async(fn)
    return await run_in_threadpool(transact, engine, fn)


def transact(engine, fn: Callable):
    """`fn(conn)` as one write transaction on `engine`: group-committed where the engine does it,
    a plain transaction otherwise (SQL Server, or group commit turned off)."""
    if isinstance(engine, GroupCommitWrites):
        return engine.transact(fn)
    with engine.begin() as conn:
        return fn(conn)

"""One write = one transaction on one shard, with idempotency and a repository span.

Idempotency is global per caller: an `Idempotency-Key` has one *home* shard, chosen by hashing
(caller, key) over the shard map, which records which request the key was first used for.
When the write lands on the home shard the record is written in the write's own transaction;
otherwise the home shard reserves the key first (one short transaction), the write runs on its
own shard (which also remembers the key, in the write's transaction, so a retry after a crash
at any point never writes twice) and the home record is completed with the answer. Keys are
stored as SHA-256 digests, never in clear, and expire after `PIM_IDEMPOTENCY_TTL_SECONDS`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from typing import Callable

import sqlalchemy as sa
from starlette.concurrency import run_in_threadpool
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError

from api_services.audit import now_iso
from api_services.errors import ApiError, Conflict, Unavailable
from api_services.group_commit import GroupCommitWrites, transact, transact_async
from api_services.prepared import prebuilt
from api_services.tables import idempotency_keys
from api_services.telemetry import DB_TX_DURATION, tracer

log = logging.getLogger("pim.transactions")
PENDING = 0  # status_code of a home record whose write has not answered yet
DEFAULT_TTL_SECONDS = 86_400


#: How long a client should wait before retrying a write that met a failover (seconds).
RETRY_AFTER_SECONDS = 2
#: SQLSTATE classes and codes that mean "the shard is changing hands, try again": connection
#: failures, an instance shutting down or starting, a standby that will not take writes.
_TRANSIENT_SQLSTATES = ("08", "57P", "25006", "53300")


def transient(exc: DBAPIError) -> bool:
    """A database error a failover causes (never a bug in the request): answered with 503."""
    if isinstance(exc, OperationalError) or exc.connection_invalidated:
        return True
    sqlstate = getattr(exc.orig, "sqlstate", None) or ""
    return any(sqlstate.startswith(code) for code in _TRANSIENT_SQLSTATES)


def unavailable(shard: str, exc: DBAPIError | None = None) -> Unavailable:
    """503 `shard_unavailable` with Retry-After: the request is fine, the shard is not (its lock
    was not acquired in time, its store cannot be opened, it is failing over or lost its quorum)."""
    text = str(getattr(exc, "orig", exc) or "").lower()
    if "locked" in text or "busy" in text or "timeout" in text:
        why = "is busy (its write lock was not acquired in time)"
    elif "unable to open" in text or "no such table" in text or "readonly" in text:
        why = "cannot be opened"
    else:
        why = "is unavailable (failover or lost quorum)"
    return Unavailable(f"shard {shard} {why}; retry with the same Idempotency-Key", "shard_unavailable",
                       headers={"Retry-After": str(RETRY_AFTER_SECONDS)})


def request_hash(method: str, path: str, body: dict) -> str:
    text = f"{method} {path} ".encode() + json.dumps(body, sort_keys=True, default=str).encode()
    return hashlib.sha256(text).hexdigest()


def key_digest(key: str) -> str:
    """What is stored for an Idempotency-Key: its SHA-256 (a key may carry anything a client typed)."""
    return hashlib.sha256(key.encode()).hexdigest()


def _cutoff(ttl_seconds: float) -> str:
    return (datetime.now(timezone.utc) - timedelta(seconds=ttl_seconds)).isoformat(timespec="microseconds")


# Built once: a statement built per call cost more CPU than executing it.
_KEY = (idempotency_keys.c.user_id == sa.bindparam("u"), idempotency_keys.c.key == sa.bindparam("k"))
_SELECT_KEY = prebuilt(sa.select(idempotency_keys).where(*_KEY))
_DELETE_KEY = prebuilt(idempotency_keys.delete().where(*_KEY))
_INSERT_KEY = prebuilt(idempotency_keys.insert())


def _stored(conn, user_id: str, key: str, ttl_seconds: float = DEFAULT_TTL_SECONDS):
    """The live record of (caller, key); an expired one is deleted and reads as absent."""
    row = conn.execute(_SELECT_KEY, {"u": user_id, "k": key}).first()
    if row is not None and row.created_at < _cutoff(ttl_seconds):
        conn.execute(_DELETE_KEY, {"u": user_id, "k": key})
        return None
    return row


def _reused() -> Conflict:
    return Conflict("Idempotency-Key was already used for a different request", "idempotency_key_reused")


def _replay(row, req_hash: str) -> tuple[int, dict, bool]:
    if row.request_hash != req_hash:
        raise _reused()
    return row.status_code, json.loads(row.response), True


def _transaction(fn: Callable, status: int, user_id: str, idempotency_key: str | None, req_hash: str,
                 ttl_seconds: float) -> Callable:
    """The one transaction of a write: the idempotency record checked, `fn`, the record kept."""

    def transaction(conn) -> tuple[int, dict, bool]:
        if idempotency_key:
            row = _stored(conn, user_id, idempotency_key, ttl_seconds)
            if row is not None and row.status_code != PENDING:
                return _replay(row, req_hash)
            if row is not None:  # our own pending reservation (home == this shard)
                if row.request_hash != req_hash:
                    raise _reused()
                conn.execute(_DELETE_KEY, {"u": user_id, "k": idempotency_key})
        body = fn(conn)
        if idempotency_key:
            conn.execute(_INSERT_KEY, {"user_id": user_id, "key": idempotency_key, "request_hash": req_hash,
                                       "status_code": status, "response": json.dumps(body, default=str),
                                       "created_at": now_iso()})
        return status, body, False

    return transaction


def _twin_answer(engine, user_id: str, idempotency_key: str, req_hash: str, ttl_seconds: float):
    """After an IntegrityError on the key: the answer of the concurrent twin that committed first."""
    with engine.connect() as conn:
        row = _stored(conn, user_id, idempotency_key, ttl_seconds)
    if row is None or row.status_code == PENDING:
        return None
    return _replay(row, req_hash)


@contextmanager
def _measured(engine, shard: str, action: str):
    """Around one write transaction: its span, its duration, and a failover's error as 503."""
    started = time.perf_counter()
    with tracer().start_as_current_span("repository.transaction", attributes={
            "db.system": engine.dialect.name, "pim.shard": shard, "pim.action": action}):
        try:
            yield
        except DBAPIError as exc:
            if not transient(exc):
                raise
            raise unavailable(shard, exc) from exc
        finally:
            DB_TX_DURATION.labels(shard, action).observe(time.perf_counter() - started)


def run_write(engine, shard: str, action: str, fn: Callable, *, status: int, user_id: str,
              idempotency_key: str | None = None, req_hash: str = "",
              ttl_seconds: float = DEFAULT_TTL_SECONDS) -> tuple[int, dict, bool]:
    """Run `fn(conn) -> response body` in one transaction; returns (status, body, replayed).

    `idempotency_key` is the key's digest: the record is kept in this transaction. When a
    concurrent twin with the same key committed first, its answer is the answer."""
    with _measured(engine, shard, action):
        try:
            return transact(engine, _transaction(fn, status, user_id, idempotency_key, req_hash, ttl_seconds))
        except IntegrityError:
            answer = _twin_answer(engine, user_id, idempotency_key, req_hash, ttl_seconds) if idempotency_key else None
            if answer is None:
                raise
            return answer


async def run_write_async(engine, shard: str, action: str, fn: Callable, *, status: int, user_id: str,
                          idempotency_key: str | None = None, req_hash: str = "",
                          ttl_seconds: float = DEFAULT_TTL_SECONDS) -> tuple[int, dict, bool]:
    """`run_write` from an event loop (the same transaction, answers and errors)."""
    with _measured(engine, shard, action):
        try:
            return await transact_async(engine, _transaction(fn, status, user_id, idempotency_key, req_hash,
                                                             ttl_seconds))
        except IntegrityError:
            answer = (await run_in_threadpool(_twin_answer, engine, user_id, idempotency_key, req_hash, ttl_seconds)
                      if idempotency_key else None)
            if answer is None:
                raise
            return answer


def _reserve(engine, shard: str, user_id: str, key: str, req_hash: str, ttl: float) -> tuple[int, dict, bool] | None:
    """On the key's home shard: the first answer (replay), 409, or None once the key is reserved."""
    try:
        with engine.begin() as conn:
            row = _stored(conn, user_id, key, ttl)
            if row is not None:
                if row.request_hash != req_hash:
                    raise _reused()
                return None if row.status_code == PENDING else _replay(row, req_hash)
            conn.execute(idempotency_keys.insert().values(user_id=user_id, key=key, request_hash=req_hash,
                                                          status_code=PENDING, response="", created_at=now_iso()))
    except IntegrityError:  # a concurrent twin reserved it first: decide against its record
        return _reserve(engine, shard, user_id, key, req_hash, ttl)
    except DBAPIError as exc:
        if not transient(exc):
            raise
        raise unavailable(shard, exc) from exc
    return None


def _settle(engine, user_id: str, key: str, req_hash: str, answer: tuple[int, dict] | None) -> None:
    """Complete the home record with the answer, or release it when the write was refused."""
    where = (idempotency_keys.c.user_id == user_id, idempotency_keys.c.key == key,
             idempotency_keys.c.request_hash == req_hash, idempotency_keys.c.status_code == PENDING)
    try:
        with engine.begin() as conn:
            if answer is None:
                conn.execute(idempotency_keys.delete().where(*where))
            else:
                conn.execute(idempotency_keys.update().where(*where).values(
                    status_code=answer[0], response=json.dumps(answer[1], default=str)))
    except Exception as exc:  # the write's own shard remembers the key: a retry still answers right
        log.warning("idempotency home record not settled", extra={"error_type": type(exc).__name__})


def write(rt, shard: str, action: str, fn: Callable, *, status: int, user_id: str,
          idempotency_key: str | None = None, req_hash: str = "") -> tuple[int, dict, bool]:
    """A write on `shard`, with the caller's Idempotency-Key honoured across every shard."""
    ttl = rt.settings.idempotency_ttl_seconds
    if not idempotency_key:
        out = run_write(rt.write_engine(shard), shard, action, fn, status=status, user_id=user_id, ttl_seconds=ttl)
        rt.engines.changes(shard).bump()  # wakes the relay
        return out
    key = key_digest(idempotency_key)
    home = rt.idempotency_home(user_id, key)
    if home == shard:
        out = run_write(rt.write_engine(shard), shard, action, fn, status=status, user_id=user_id,
                        idempotency_key=key, req_hash=req_hash, ttl_seconds=ttl)
        rt.engines.changes(shard).bump()
        return out
    home_engine = rt.write_engine(home)
    first = _reserve(home_engine, home, user_id, key, req_hash, ttl)
    if first is not None:
        return first
    try:
        out = run_write(rt.write_engine(shard), shard, action, fn, status=status, user_id=user_id,
                        idempotency_key=key, req_hash=req_hash, ttl_seconds=ttl)
    except ApiError as exc:
        if exc.status < 500:  # refused: the key is not consumed (as on a single shard)
            _settle(home_engine, user_id, key, req_hash, None)
        raise
    rt.engines.changes(shard).bump()
    _settle(home_engine, user_id, key, req_hash, (out[0], out[1]))
    return out


async def write_async(rt, shard: str, action: str, fn: Callable, *, status: int, user_id: str,
                      idempotency_key: str | None = None, req_hash: str = "") -> tuple[int, dict, bool]:
    """`write` for an async endpoint. A write that is one transaction on its own shard (no key, or
    the key's home is that shard) waits for its group commit on the event loop, with no
    threadpool thread; a write that must reserve its key on another shard runs `write` in one."""
    engine = rt.write_engine(shard) if rt.engines.built(shard) else None  # else a rebuild: not on the loop
    key = key_digest(idempotency_key) if idempotency_key else None
    if isinstance(engine, GroupCommitWrites) and (key is None or rt.idempotency_home(user_id, key) == shard):
        out = await run_write_async(engine, shard, action, fn, status=status, user_id=user_id, idempotency_key=key,
                                    req_hash=req_hash, ttl_seconds=rt.settings.idempotency_ttl_seconds)
        rt.engines.changes(shard).bump()  # wakes the relay
        return out
    return await run_in_threadpool(write, rt, shard, action, fn, status=status, user_id=user_id,
                                   idempotency_key=idempotency_key, req_hash=req_hash)


def purge_expired_keys(engine, ttl_seconds: float) -> int:
    """Delete idempotency records past their lifetime (the relay does this once a minute)."""
    with engine.begin() as conn:
        return conn.execute(idempotency_keys.delete().where(idempotency_keys.c.created_at < _cutoff(ttl_seconds))
                            ).rowcount or 0


def run_read(engine, shard: str, fn: Callable):
    with tracer().start_as_current_span("repository.read", attributes={"db.system": engine.dialect.name,
                                                                        "pim.shard": shard}):
        try:
            with engine.connect() as conn:
                return fn(conn)
        except DBAPIError as exc:
            if not transient(exc):
                raise
            raise unavailable(shard, exc) from exc

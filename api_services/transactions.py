"""One write = one transaction on one shard, with idempotency and a repository span.

Idempotency records live in the same shard and the same transaction as the write they
remember, so a retried POST either sees the whole first write or none of it.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Callable

import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError

from api_services.audit import now_iso
from api_services.db import idempotency_keys
from api_services.errors import Conflict, Unavailable
from api_services.telemetry import DB_TX_DURATION, tracer


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


def unavailable(shard: str) -> Unavailable:
    return Unavailable(f"shard {shard} is unavailable (failover or lost quorum); retry with the same Idempotency-Key",
                       "shard_unavailable", headers={"Retry-After": str(RETRY_AFTER_SECONDS)})


def request_hash(method: str, path: str, body: dict) -> str:
    return hashlib.sha256(f"{method} {path} ".encode() + json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


def _stored(conn, user_id: str, key: str):
    return conn.execute(sa.select(idempotency_keys).where(idempotency_keys.c.user_id == user_id,
                                                          idempotency_keys.c.key == key)).first()


def _replay(row, req_hash: str) -> tuple[int, dict, bool]:
    if row.request_hash != req_hash:
        raise Conflict("Idempotency-Key was already used for a different request", "idempotency_key_reused")
    return row.status_code, json.loads(row.response), True


def run_write(engine, shard: str, action: str, fn: Callable, *, status: int, user_id: str,
              idempotency_key: str | None = None, req_hash: str = "") -> tuple[int, dict, bool]:
    """Run `fn(conn) -> response body` in one transaction; returns (status, body, replayed)."""
    started = time.perf_counter()
    with tracer().start_as_current_span("repository.transaction", attributes={
            "db.system": engine.dialect.name, "pim.shard": shard, "pim.action": action}):
        try:
            with engine.begin() as conn:
                if idempotency_key:
                    row = _stored(conn, user_id, idempotency_key)
                    if row is not None:
                        return _replay(row, req_hash)
                body = fn(conn)
                if idempotency_key:
                    conn.execute(idempotency_keys.insert().values(
                        user_id=user_id, key=idempotency_key, request_hash=req_hash, status_code=status,
                        response=json.dumps(body, default=str), created_at=now_iso()))
        except IntegrityError:
            if not idempotency_key:
                raise
            with engine.connect() as conn:  # a concurrent twin committed first: answer as it did
                row = _stored(conn, user_id, idempotency_key)
            if row is None:
                raise
            return _replay(row, req_hash)
        except DBAPIError as exc:
            if not transient(exc):
                raise
            raise unavailable(shard) from exc
        finally:
            DB_TX_DURATION.labels(shard, action).observe(time.perf_counter() - started)
    return status, body, False


def run_read(engine, shard: str, fn: Callable):
    with tracer().start_as_current_span("repository.read", attributes={"db.system": engine.dialect.name,
                                                                        "pim.shard": shard}):
        try:
            with engine.connect() as conn:
                return fn(conn)
        except DBAPIError as exc:
            if not transient(exc):
                raise
            raise unavailable(shard) from exc

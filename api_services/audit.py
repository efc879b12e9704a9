"""The hash-chained audit log, and the one function every write goes through.

`record_write` adds, inside the caller's transaction, the history row (before/after), the
audit event chained to its predecessor by SHA-256, and the outbox event. The chain head is
kept in `audit_head`, so deleting the newest rows is as detectable as editing old ones.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from api_services.prepared import prebuilt
from api_services.tables import audit_events, audit_head, history, outbox

GENESIS = "0" * 64


@dataclass(frozen=True)
class Actor:
    user_id: str
    persona: str
    request_id: str  # the server's own id of the request (or of the seed run)
    correlation_id: str | None = None  # the client's X-Request-Id, when it sent one


#: The outbox event each audited write action emits (what `replay` checks the stream against).
EVENT_OF_ACTION = {"patient.create": "patient.registered", "encounter.book": "encounter.booked",
                   "encounter.document": "encounter.documented", "claim.submit": "claim.submitted",
                   "facility.create": "facility.registered", "provider.create": "provider.registered"}
_OPTIONAL = ("correlation_id", "history_id", "history_hash")
_HISTORY_FIELDS = ("id", "entity", "entity_id", "version", "before", "after", "valid_from", "request_id", "user_id")


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def canonical(value) -> str | None:
    return None if value is None else json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def _digest(prev_hash: str, row: dict) -> str:
    fields = {k: row[k] for k in ("seq", "event_id", "ts", "user_id", "request_id", "persona", "action",
                                  "entity", "entity_id", "before", "after")}
    fields.update({k: row[k] for k in _OPTIONAL if row.get(k) is not None})  # chains older than them still verify
    return hashlib.sha256((prev_hash + canonical(fields)).encode()).hexdigest()


def history_digest(row) -> str:
    """What binds a history row into its audit event's hash: every column of the row."""
    return hashlib.sha256(canonical({k: row[k] for k in _HISTORY_FIELDS}).encode()).hexdigest()


def chain_head_for_update():
    """The chain head, locked until commit: SQLite's BEGIN IMMEDIATE already serialises writers;
    SQL Server needs the explicit UPDLOCK/HOLDLOCK hint (its dialect ignores FOR UPDATE);
    PostgreSQL takes the row lock with SELECT ... FOR UPDATE."""
    return (sa.select(audit_head.c.seq, audit_head.c.hash).where(audit_head.c.id == 1)
            .with_hint(audit_head, "WITH (UPDLOCK, HOLDLOCK, ROWLOCK)", dialect_name="mssql")
            .with_for_update())


# The write path's statements, built once (building them per call cost more than running them).
# On SQLite they run through the driver directly (api_services/prepared.py).
_HEAD = prebuilt(chain_head_for_update())
_INSERT_AUDIT = prebuilt(audit_events.insert())
_MOVE_HEAD = prebuilt(audit_head.update().where(audit_head.c.id == 1).values(seq=sa.bindparam("new_seq"),
                                                                             hash=sa.bindparam("new_hash")))
_INSERT_HEAD = prebuilt(audit_head.insert())
_INSERT_HISTORY = prebuilt(history.insert())
_INSERT_OUTBOX = prebuilt(outbox.insert())


def append_audit(conn: Connection, actor: Actor, action: str, entity: str, entity_id: str,
                 before: dict | None, after: dict | None, history_row: dict | None = None) -> dict:
    head = conn.execute(_HEAD).first()
    seq, prev = (head.seq, head.hash) if head else (0, GENESIS)
    row = {"seq": seq + 1, "event_id": str(uuid.uuid4()), "ts": now_iso(), "user_id": actor.user_id,
           "request_id": actor.request_id, "persona": actor.persona, "action": action, "entity": entity,
           "entity_id": entity_id, "before": canonical(before), "after": canonical(after), "prev_hash": prev,
           "correlation_id": actor.correlation_id,
           "history_id": history_row["id"] if history_row else None,
           "history_hash": history_digest(history_row) if history_row else None}
    row["hash"] = _digest(prev, row)
    conn.execute(_INSERT_AUDIT, row)
    if head:
        conn.execute(_MOVE_HEAD, {"new_seq": row["seq"], "new_hash": row["hash"]})
    else:
        conn.execute(_INSERT_HEAD, {"id": 1, "seq": row["seq"], "hash": row["hash"]})
    return row


def record_write(conn: Connection, actor: Actor, *, action: str, entity: str, entity_id: str, version: int,
                 before: dict | None, after: dict, event_type: str) -> str:
    """History + audit + outbox for a row the caller has just written in `conn`'s transaction."""
    ts = now_iso()
    hist = {"entity": entity, "entity_id": entity_id, "version": version, "before": canonical(before),
            "after": canonical(after), "valid_from": ts, "request_id": actor.request_id, "user_id": actor.user_id}
    hist["id"] = conn.execute(_INSERT_HISTORY, hist).inserted_primary_key[0]
    audit = append_audit(conn, actor, action, entity, entity_id, before, after, history_row=hist)
    event_id = str(uuid.uuid4())
    payload = {"event_id": event_id, "type": event_type, "entity": entity, "entity_id": entity_id,
               "version": version, "audit_seq": audit["seq"], "request_id": actor.request_id,
               "user_id": actor.user_id, "occurred_at": ts, "data": after}
    conn.execute(_INSERT_OUTBOX, {"event_id": event_id, "event_type": event_type, "entity_id": entity_id,
                                  "payload": canonical(payload), "created_at": ts})
    return event_id


def _verify_history(conn: Connection) -> list[dict]:
    """Every history row is bound by exactly one chained audit event, and hashes as bound."""
    problems: list[dict] = []
    bound = {r.history_id: (r.seq, r.history_hash) for r in conn.execute(
        sa.select(audit_events.c.seq, audit_events.c.history_id, audit_events.c.history_hash)
        .where(audit_events.c.history_id.is_not(None)))}
    seen = set()
    # A store an older schema wrote has history rows no event binds (its audit_events lack
    # history_id): only the rows from the first bound one on must be bound, and a store with no
    # bound row at all is checked for none.
    floor = min(bound) if bound else None
    for row in conn.execute(sa.select(history).order_by(history.c.id)).mappings():
        seen.add(row["id"])
        if row["id"] not in bound and (floor is None or row["id"] < floor):
            continue
        if row["id"] not in bound:
            problems.append({"history_id": row["id"], "problem": "history_unbound",
                             "detail": "no audit event binds this history row"})
        elif history_digest(row) != bound[row["id"]][1]:
            problems.append({"seq": bound[row["id"]][0], "history_id": row["id"], "problem": "history_altered"})
    for history_id, (seq, _) in sorted(bound.items()):
        if history_id not in seen:
            problems.append({"seq": seq, "history_id": history_id, "problem": "history_missing"})
    return problems


def verify_chain(conn: Connection) -> dict:
    """Walk one shard's chain; report edited rows, gaps (deleted rows) and a truncated tail."""
    problems: list[dict] = []
    prev_hash, expected_seq, count = GENESIS, 1, 0
    for row in conn.execute(sa.select(audit_events).order_by(audit_events.c.seq)).mappings():
        count += 1
        if row["seq"] != expected_seq:
            problems.append({"seq": expected_seq, "problem": "missing", "detail": f"next row is seq {row['seq']}"})
        if row["prev_hash"] != prev_hash:
            problems.append({"seq": row["seq"], "problem": "broken_link"})
        if _digest(row["prev_hash"], dict(row)) != row["hash"]:
            problems.append({"seq": row["seq"], "problem": "altered"})
        prev_hash, expected_seq = row["hash"], row["seq"] + 1
    problems += _verify_history(conn)
    head = conn.execute(sa.select(audit_head).where(audit_head.c.id == 1)).first()
    last_seq = expected_seq - 1
    if head is None and count:
        problems.append({"seq": last_seq, "problem": "missing_head"})
    elif head is not None and (head.seq != last_seq or head.hash != prev_hash):
        problems.append({"seq": head.seq, "problem": "truncated" if head.seq > last_seq else "head_mismatch"})
    return {"events": count, "ok": not problems, "problems": problems}

"""`audit verify` and `replay`: prove the tables are what the event history says they are."""

from __future__ import annotations

import json

import sqlalchemy as sa

from api_services.audit import EVENT_OF_ACTION, canonical, verify_chain
from api_services.domain import claims as claim_dom
from api_services.domain import encounters as enc_dom
from api_services.domain import kpis
from api_services.domain import patients as pat_dom
from api_services.domain import reference
from api_services.errors import ApiError
from api_services.tables import (audit_events, claims, encounters, event_stream, facilities, outbox, patients,
                                 processed_events, providers)
from api_services.workers import CONSUMER

_ENTITIES = {
    "patient": (patients, patients.c.patient_id, pat_dom.snapshot),
    "encounter": (encounters, encounters.c.encounter_id, enc_dom.snapshot),
    "claim": (claims, claims.c.claim_id, claim_dom.snapshot),
    "provider": (providers, providers.c.provider_id, reference.snapshot_provider),
    "facility": (facilities, facilities.c.facility_id, reference.snapshot_facility),
}


def _per_shard(engines, fn) -> dict:
    shards = {}
    for name in engines.names():
        try:
            with engines.read(name).connect() as conn:
                shards[name] = fn(conn)
        except ApiError as exc:  # an unavailable shard fails the check, by name, and the rest still run
            shards[name] = {"ok": False, "error": exc.message}
    return {"ok": all(s["ok"] for s in shards.values()), "shards": shards}


def verify_audit(engines) -> dict:
    return _per_shard(engines, verify_chain)


def _stream_against_chain(conn, audits: dict[int, dict], diffs: list[dict]) -> dict[str, dict]:
    """Check every relayed event (and outbox row) against the chained audit event it names.

    Returns the stream's events by event_id whose audit event vouches for them."""
    vouched: dict[str, dict] = {}

    def check(where: str, event_id: str, event_type: str, payload_text: str) -> dict | None:
        try:
            payload = json.loads(payload_text)
            audit = audits.get(int(payload.get("audit_seq")))
        except (TypeError, ValueError):
            payload, audit = None, None
        if audit is None:
            diffs.append({"entity": where, "id": event_id, "problem": "event_without_audit"})
            return None
        if (event_type != EVENT_OF_ACTION.get(audit["action"]) or payload.get("event_id") != event_id
                or payload.get("entity_id") != audit["entity_id"] or canonical(payload.get("data")) != audit["after"]):
            diffs.append({"entity": where, "id": event_id, "problem": "event_differs_from_audit",
                          "detail": f"audit seq {audit['seq']}"})
            return None
        return audit

    stream_ids = set()
    for row in conn.execute(sa.select(event_stream.c.event_id, event_stream.c.event_type, event_stream.c.payload)):
        stream_ids.add(row.event_id)
        audit = check("event_stream", row.event_id, row.event_type, row.payload)
        if audit is not None:
            vouched[row.event_id] = audit
    for row in conn.execute(sa.select(outbox.c.event_id, outbox.c.event_type, outbox.c.payload, outbox.c.published_at)):
        check("outbox", row.event_id, row.event_type, row.payload)
        if row.published_at is not None and row.event_id not in stream_ids:
            diffs.append({"entity": "event_stream", "id": row.event_id, "problem": "event_missing"})
    return vouched


def replay_shard(conn, max_diffs: int = 50) -> dict:
    """Rebuild from the hash-chained audit record and diff the tables, the stream and the KPIs with it.

    The chain is verified first; rows are folded from its after-images; every relayed event must
    match the audit event it names (so an edited or deleted stream event shows); KPIs are
    recomputed from the audit events of the projected events, not from the stream's payloads."""
    diffs: list[dict] = []
    chain = verify_chain(conn)
    for problem in chain["problems"]:
        diffs.append({"entity": "audit", "id": str(problem.get("seq", problem.get("history_id"))),
                      "problem": f"chain_{problem['problem']}"})
    state: dict[tuple[str, str], str | None] = {}
    audits: dict[int, dict] = {}
    for row in conn.execute(sa.select(audit_events.c.seq, audit_events.c.action, audit_events.c.entity,
                                      audit_events.c.entity_id, audit_events.c.after).order_by(audit_events.c.seq)):
        if row.action in EVENT_OF_ACTION:
            state[(row.entity, row.entity_id)] = row.after
            audits[row.seq] = dict(row._mapping)
    checked = 0
    for entity, (table, key, snap) in _ENTITIES.items():
        in_table = set(conn.execute(sa.select(key)).scalars())
        in_events = {eid for (ent, eid), after in state.items() if ent == entity and after is not None}
        for eid in sorted(in_table - in_events):
            diffs.append({"entity": entity, "id": eid, "problem": "row_without_events"})
        for eid in sorted(in_events - in_table):
            diffs.append({"entity": entity, "id": eid, "problem": "events_without_row"})
        for eid in sorted(in_table & in_events):
            checked += 1
            if canonical(snap(conn, eid)) != state[(entity, eid)]:
                diffs.append({"entity": entity, "id": eid, "problem": "differs_from_events"})
    vouched = _stream_against_chain(conn, audits, diffs)
    expected = {k: 0 for k in kpis.KPI_NAMES}
    projected = sa.select(processed_events.c.event_id).where(processed_events.c.consumer == CONSUMER)
    for event_id in conn.execute(projected).scalars():
        audit = vouched.get(event_id)
        if audit is None:  # reported above (missing or not vouched for by the chain)
            continue
        data = {"data": json.loads(audit["after"])}
        for k, v in kpis.deltas(EVENT_OF_ACTION[audit["action"]], data).items():
            expected[k] += v
    actual = kpis.read(conn)
    for k in kpis.KPI_NAMES:
        if expected[k] != actual[k]:
            diffs.append({"entity": "kpi", "id": k, "problem": f"expected {expected[k]}, table has {actual[k]}"})
    return {"rows_checked": checked, "events_checked": len(vouched), "ok": not diffs,
            "differences": diffs[:max_diffs], "difference_count": len(diffs)}


def replay(engines) -> dict:
    return _per_shard(engines, replay_shard)

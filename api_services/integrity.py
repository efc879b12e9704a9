"""`audit verify` and `replay`: prove the tables are what the event history says they are."""

from __future__ import annotations

import json

import sqlalchemy as sa

from api_services.audit import canonical, verify_chain
from api_services.db import audit_events, claims, encounters, event_stream, facilities, patients, processed_events, providers
from api_services.domain import claims as claim_dom
from api_services.domain import encounters as enc_dom
from api_services.domain import kpis
from api_services.domain import patients as pat_dom
from api_services.domain import reference
from api_services.workers import CONSUMER

_ENTITIES = {
    "patient": (patients, patients.c.patient_id, pat_dom.snapshot),
    "encounter": (encounters, encounters.c.encounter_id, enc_dom.snapshot),
    "claim": (claims, claims.c.claim_id, claim_dom.snapshot),
    "provider": (providers, providers.c.provider_id, reference.snapshot_provider),
    "facility": (facilities, facilities.c.facility_id, reference.snapshot_facility),
}


def _per_shard(engines, fn) -> dict:
    from api_services.errors import ApiError

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


def replay_shard(conn, max_diffs: int = 50) -> dict:
    """Fold the audit events' after-images and the projected events; diff against the tables."""
    state: dict[tuple[str, str], str | None] = {}
    for row in conn.execute(sa.select(audit_events.c.entity, audit_events.c.entity_id, audit_events.c.after)
                            .order_by(audit_events.c.seq)):
        state[(row.entity, row.entity_id)] = row.after
    diffs: list[dict] = []
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
    expected = {k: 0 for k in kpis.KPI_NAMES}
    projected = sa.select(event_stream.c.event_type, event_stream.c.payload).join(
        processed_events, sa.and_(processed_events.c.event_id == event_stream.c.event_id,
                                  processed_events.c.consumer == CONSUMER))
    for row in conn.execute(projected):
        for k, v in kpis.deltas(row.event_type, json.loads(row.payload)).items():
            expected[k] += v
    actual = kpis.read(conn)
    for k in kpis.KPI_NAMES:
        if expected[k] != actual[k]:
            diffs.append({"entity": "kpi", "id": k, "problem": f"expected {expected[k]}, table has {actual[k]}"})
    return {"rows_checked": checked, "ok": not diffs, "differences": diffs[:max_diffs],
            "difference_count": len(diffs)}


def replay(engines) -> dict:
    return _per_shard(engines, replay_shard)

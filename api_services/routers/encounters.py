"""Encounter service: booking, documentation, and the reference data booking needs."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Path, Request, Response

from api_services.auth import Principal, principal, require
from api_services.domain import encounters as dom
from api_services.domain import ids, reference
from api_services.errors import ERROR_RESPONSES, WRITE_RESPONSES, Forbidden, NotFound
from api_services.routers import LINKS, IdempotencyKey, actor, answer_write, written
from api_services.runtime import runtime
from api_services.telemetry import tracer
from api_services import transactions
from api_services.transactions import request_hash, run_read

router = APIRouter(tags=["encounter"], responses=ERROR_RESPONSES)
EncounterId = Path(pattern=ids.ENCOUNTER_ID)


@router.post("/encounters", status_code=202, response_model=dom.Accepted,
             responses={**WRITE_RESPONSES, 202: LINKS["encounter_booked"]})
async def book_encounter(body: dom.BookEncounter, request: Request,
                         who: Principal = Depends(principal), idempotency_key: str | None = IdempotencyKey):
    """Patients book for themselves, clinicians for anyone; answered 202 with a tracking id."""
    # Async: the write waits for its group commit on the event loop (no threadpool thread); the
    # transaction itself runs on the shard's writer thread.
    require(who, "patient", "clinician")
    if who.persona == "patient" and who.user_id != body.patient_id:
        raise Forbidden("patients may only book for themselves", "not_own_record")
    rt = runtime(request)
    await rt.fresh_map()
    shard, slot = rt.route_patient(body.patient_id)
    encounter_id = ids.slotted_id("enc", slot)

    with tracer().start_as_current_span("encounter.book"):
        status, out, replayed = await transactions.write_async(
            rt, shard, "encounter.book", lambda conn: dom.book(conn, actor(who), encounter_id, body), status=202,
            user_id=who.user_id, idempotency_key=idempotency_key,
            req_hash=request_hash("POST", "/encounters", body.model_dump()) if idempotency_key else "")
    return written(status, out, f"/encounters/{out['tracking_id']}", replayed)  # `out` is a dom.Accepted


def _load(conn, encounter_id: str) -> dict:
    row = dom.snapshot(conn, encounter_id)
    if row is None:
        raise NotFound("encounter not found", "encounter_not_found")
    return row


@router.get("/encounters/{encounter_id}", response_model=dom.Encounter)
def get_encounter(request: Request, encounter_id: str = EncounterId, who: Principal = Depends(principal)):
    require(who, "patient", "clinician", "admin")
    rt = runtime(request)
    shard, _ = rt.route_id(encounter_id, "encounter")
    row = run_read(rt.engines.read(shard), shard, lambda conn: _load(conn, encounter_id))
    if who.persona == "patient" and row["patient_id"] != who.user_id:
        raise Forbidden("patients may only read their own records", "not_own_record")
    return row


@router.patch("/encounters/{encounter_id}/notes", response_model=dom.Encounter,
             responses={**WRITE_RESPONSES, 200: LINKS["encounter_documented"]})
def document_encounter(body: dom.EncounterNotes, request: Request, response: Response,
                       encounter_id: str = EncounterId, who: Principal = Depends(principal),
                       idempotency_key: str | None = IdempotencyKey):
    """Clinicians document; notes are redacted and the change gets a history row and an audit event."""
    require(who, "clinician")
    rt = runtime(request)
    shard, _ = rt.route_id(encounter_id, "encounter")
    with tracer().start_as_current_span("encounter.document"):
        status, out, replayed = transactions.write(
            rt, shard, "encounter.document",
            lambda conn: dom.document(conn, actor(who), _load(conn, encounter_id), body), status=200,
            user_id=who.user_id, idempotency_key=idempotency_key,
            req_hash=request_hash("PATCH", f"/encounters/{encounter_id}/notes", body.model_dump())
            if idempotency_key else "")
    answer_write(response, status, None, replayed)
    return out


@router.get("/providers", response_model=list[reference.Provider])
def list_providers(request: Request, who: Principal = Depends(principal)):
    rt = runtime(request)
    shard = rt.reference_shard()
    return run_read(rt.engines.read(shard), shard, reference.list_providers)


@router.get("/facilities", response_model=list[reference.Facility])
def list_facilities(request: Request, who: Principal = Depends(principal)):
    rt = runtime(request)
    shard = rt.reference_shard()
    return run_read(rt.engines.read(shard), shard, reference.list_facilities)

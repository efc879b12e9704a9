"""Patient service: registration and a patient's own record."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Path, Request, Response

from api_services.auth import Principal, principal, require
from api_services.domain import encounters as enc_dom
from api_services.domain import ids
from api_services.domain import patients as dom
from api_services.errors import ERROR_RESPONSES, WRITE_RESPONSES, Forbidden, NotFound
from api_services.routers import LINKS, IdempotencyKey, actor, answer_write
from api_services.runtime import runtime
from api_services.telemetry import tracer
from api_services import transactions
from api_services.transactions import request_hash, run_read

router = APIRouter(tags=["patient"], responses=ERROR_RESPONSES)
PatientId = Path(pattern=ids.PATIENT_ID)


def _may_read(who: Principal, patient_id: str, personas: tuple[str, ...]) -> None:
    require(who, *personas)
    if who.persona == "patient" and who.user_id != patient_id:
        raise Forbidden("patients may only read their own records", "not_own_record")


@router.post("/patients", status_code=201, response_model=dom.PatientCreated,
             responses={**WRITE_RESPONSES, 201: LINKS["patient_created"]})
def register_patient(body: dom.PatientCreate, request: Request, response: Response,
                     who: Principal = Depends(principal), idempotency_key: str | None = IdempotencyKey):
    """Admins register patients; the id decides the shard for the patient's whole life."""
    require(who, "admin")
    rt = runtime(request)
    patient_id = ids.new_patient_id(who.user_id, idempotency_key)
    shard, _slot = rt.route_patient(patient_id)
    with tracer().start_as_current_span("patient.register"):
        status, out, replayed = transactions.write(
            rt, shard, "patient.create",
            lambda conn: dom.create(conn, actor(who), patient_id, body), status=201, user_id=who.user_id,
            idempotency_key=idempotency_key, req_hash=request_hash("POST", "/patients", body.model_dump()))
    answer_write(response, status, f"/patients/{out['patient_id']}", replayed)
    return out


@router.get("/patients/{patient_id}", response_model=dom.Patient)
def get_patient(request: Request, patient_id: str = PatientId, who: Principal = Depends(principal)):
    _may_read(who, patient_id, ("patient", "clinician", "admin"))
    rt = runtime(request)
    shard, _ = rt.route_patient(patient_id)
    row = run_read(rt.engines.read(shard), shard, lambda conn: dom.snapshot(conn, patient_id))
    if row is None:
        raise NotFound("patient not found", "patient_not_found")
    return row


@router.get("/patients/{patient_id}/encounters", response_model=list[enc_dom.Encounter])
def list_patient_encounters(request: Request, patient_id: str = PatientId, who: Principal = Depends(principal)):
    _may_read(who, patient_id, ("patient", "clinician"))
    rt = runtime(request)
    shard, _ = rt.route_patient(patient_id)
    return run_read(rt.engines.read(shard), shard, lambda conn: enc_dom.for_patient(conn, patient_id))

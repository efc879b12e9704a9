"""HTTP routers, one per service; a process includes the ones it hosts."""

from __future__ import annotations

from fastapi import Header, Response
from fastapi.responses import JSONResponse

from api_services.audit import Actor
from api_services.auth import Principal
from api_services.telemetry import current_context

IdempotencyKey = Header(None, alias="Idempotency-Key", min_length=1, max_length=128, pattern=r"^[\x21-\x7e]+$",
                        description="Retrying a POST with the same key returns the first answer without a second write.")


def actor(who: Principal) -> Actor:
    ctx = current_context()
    return Actor(user_id=who.user_id, persona=who.persona, request_id=ctx.request_id,
                 correlation_id=ctx.correlation_id)


def write_headers(location: str | None, replayed: bool) -> dict[str, str]:
    """Headers of an acknowledged write: where the written resource is, and whether this answer is
    the replay of the first one (`Idempotent-Replayed`)."""
    headers = {"Location": location} if location else {}
    if replayed:
        headers["Idempotent-Replayed"] = "true"
    return headers


def answer_write(response: Response, status: int, location: str | None, replayed: bool) -> None:
    """Status and headers of an acknowledged write, set on the route's response."""
    response.status_code = status
    response.headers.update(write_headers(location, replayed))


def written(status: int, body: dict, location: str, replayed: bool) -> JSONResponse:
    """`answer_write` as the response itself, for a body built to the route's response model
    (FastAPI then skips validating and re-serializing it through that model)."""
    return JSONResponse(body, status_code=status, headers=write_headers(location, replayed))


def _link(operation: str, description: str, parameters: dict | None = None, body: dict | None = None) -> dict:
    out = {"operationId": operation, "description": description}
    if parameters:
        out["parameters"] = parameters
    if body:
        out["requestBody"] = body
    return out


#: OpenAPI links, so a stateful client (schemathesis) can create, then read, document and claim.
LINKS = {
    "patient_created": {"links": {
        "GetPatient": _link("get_patient_patients__patient_id__get", "read the new patient",
                            {"patient_id": "$response.body#/patient_id"}),
        "ListPatientEncounters": _link("list_patient_encounters_patients__patient_id__encounters_get",
                                       "the new patient's encounters", {"patient_id": "$response.body#/patient_id"}),
    }},
    "encounter_booked": {"links": {
        "GetEncounter": _link("get_encounter_encounters__encounter_id__get", "read the booked encounter",
                              {"encounter_id": "$response.body#/tracking_id"}),
        "DocumentEncounter": _link("document_encounter_encounters__encounter_id__notes_patch",
                                   "document the booked encounter", {"encounter_id": "$response.body#/tracking_id"}),
    }},
    "encounter_documented": {"links": {
        "GetDocumentedEncounter": _link("get_encounter_encounters__encounter_id__get", "read it back",
                                        {"encounter_id": "$response.body#/encounter_id"}),
        "ClaimEncounter": _link("submit_claim_claims_post", "claim the documented encounter",
                                body={"encounter_id": "$response.body#/encounter_id", "amount_cents": 12500,
                                      "payer": "Lab Mutual"}),
    }},
    "claim_submitted": {"links": {
        "GetClaim": _link("get_claim_claims__claim_id__get", "read the submitted claim",
                          {"claim_id": "$response.body#/tracking_id"}),
    }},
}

"""Claims submitted by admins against an encounter; the projection turns them into KPIs."""

from __future__ import annotations

from typing import Annotated

import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field

from api_services.audit import Actor, now_iso, record_write
from api_services.domain import encounters, ids
from api_services.errors import Conflict, unknown_reference
from api_services.redaction import FreeText
from api_services.tables import claims


class SubmitClaim(BaseModel):
    model_config = ConfigDict(extra="forbid")

    encounter_id: Annotated[str, Field(pattern=ids.ENCOUNTER_ID)]
    amount_cents: Annotated[int, Field(strict=True, ge=1, le=100_000_000,
                                       description="Cents; at most the configured ceiling (`PIM_CLAIM_MAX_CENTS`)")]
    payer: FreeText(80, pattern=r"^[A-Za-z][A-Za-z0-9 &.-]*$")


class Claim(BaseModel):
    claim_id: str
    encounter_id: str
    patient_id: str
    amount_cents: int
    payer: str
    status: str
    version: int
    created_at: str


def snapshot(conn, claim_id: str) -> dict | None:
    row = conn.execute(sa.select(claims).where(claims.c.claim_id == claim_id)).mappings().first()
    return dict(row) if row else None


OPEN_STATUSES = ("submitted",)


def open_claim_for(conn, encounter_id: str) -> str | None:
    """The encounter's open claim, if any (locked on SQL Server until commit, so two cannot race)."""
    return conn.execute(sa.select(claims.c.claim_id).where(claims.c.encounter_id == encounter_id,
                                                          claims.c.status.in_(OPEN_STATUSES))
                        .with_hint(claims, "WITH (UPDLOCK, HOLDLOCK, ROWLOCK)", dialect_name="mssql")).scalar()


def submit(conn, actor: Actor, claim_id: str, data: SubmitClaim) -> dict:
    """Claim an encounter that exists (422 `unknown_reference` otherwise), is documented and has no
    open claim (409 otherwise); the claim belongs to the encounter's patient."""
    encounter = encounters.snapshot(conn, data.encounter_id)
    if encounter is None:
        raise unknown_reference("encounter_id", "encounter")
    if encounter["status"] != "documented":
        raise Conflict(f"encounter {data.encounter_id} is not documented yet; document it before claiming",
                       "encounter_not_documented")
    already = open_claim_for(conn, data.encounter_id)
    if already is not None:
        raise Conflict(f"encounter {data.encounter_id} already has open claim {already}", "claim_already_open")
    row = {"claim_id": claim_id, "encounter_id": data.encounter_id, "patient_id": encounter["patient_id"],
           "amount_cents": data.amount_cents, "payer": data.payer, "status": "submitted", "version": 1,
           "created_at": now_iso()}
    conn.execute(claims.insert().values(**row))
    record_write(conn, actor, action="claim.submit", entity="claim", entity_id=claim_id, version=1,
                 before=None, after=row, event_type="claim.submitted")
    return {"tracking_id": claim_id, "status": "accepted"}

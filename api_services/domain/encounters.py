"""Encounters, with the diagnoses, procedures and medications a clinician documents on them."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Annotated, Literal

import sqlalchemy as sa
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator

from api_services.audit import Actor, now_iso, record_write
from api_services.domain import ids, patients, reference
from api_services.errors import Conflict, unknown_reference
from api_services.prepared import prebuilt
from api_services.redaction import FreeText
from api_services.tables import diagnoses, encounters, medications, procedures


class BookEncounter(BaseModel):
    # the example books for the first patient `pimlab seed` makes, so a stateful client can go on
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{
        "patient_id": ids.new_patient_id("seed", "42:patient:0"), "provider_id": "prv-0001",
        "facility_id": "fac-001", "scheduled_for": "2026-06-01T09:30:00Z", "reason": "follow-up visit"}]})

    patient_id: Annotated[str, Field(pattern=ids.PATIENT_ID)]
    provider_id: Annotated[str, Field(pattern=ids.PROVIDER_ID)]
    facility_id: Annotated[str, Field(pattern=ids.FACILITY_ID)]
    scheduled_for: Annotated[AwareDatetime, Field(description="With a timezone; from 10 years ago to 2 years ahead")]
    reason: FreeText(200)

    @field_validator("scheduled_for")
    @classmethod
    def _plausible(cls, value: datetime) -> datetime:
        now = datetime.now(timezone.utc)
        earliest, latest = now - timedelta(days=3653), now + timedelta(days=731)
        try:
            utc = value.astimezone(timezone.utc)
        except (OverflowError, ValueError):
            utc = None
        if utc is None or not earliest <= utc <= latest:
            raise ValueError(f"scheduled_for must be between {earliest:%Y-%m-%d} and {latest:%Y-%m-%d}")
        return utc


class Diagnosis(BaseModel):
    model_config = ConfigDict(extra="forbid")

    code: Annotated[str, Field(pattern=r"^[A-TV-Z][0-9][0-9AB](\.[0-9A-Z]{1,4})?$", description="ICD-10-CM")]
    description: FreeText(200)


class Procedure(BaseModel):
    model_config = ConfigDict(extra="forbid")

    code: Annotated[str, Field(pattern=r"^[0-9]{5}$", description="CPT")]
    description: FreeText(200)


class Medication(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: FreeText(80, pattern=r"^[A-Za-z][A-Za-z0-9 -]*$")
    dose: FreeText(40)


class EncounterNotes(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{
        "notes": "Seen for a follow-up; plan discussed.", "diagnoses": [{"code": "J06.9", "description": "Acute URI"}],
        "procedures": [{"code": "99213", "description": "Office visit"}],
        "medications": [{"name": "Ibuprofen", "dose": "400 mg"}]}]})

    notes: FreeText(4000)
    diagnoses: Annotated[list[Diagnosis], Field(max_length=20)] = []
    procedures: Annotated[list[Procedure], Field(max_length=20)] = []
    medications: Annotated[list[Medication], Field(max_length=20)] = []


class Accepted(BaseModel):
    tracking_id: str
    status: str


class Encounter(BaseModel):
    encounter_id: str
    patient_id: str
    provider_id: str
    facility_id: str
    scheduled_for: str
    reason: str
    status: Literal["booked", "documented"]
    notes: str | None
    version: int
    created_at: str
    updated_at: str
    diagnoses: list[Diagnosis]
    procedures: list[Procedure]
    medications: list[Medication]


def snapshot(conn, encounter_id: str) -> dict | None:
    row = conn.execute(sa.select(encounters).where(encounters.c.encounter_id == encounter_id)).mappings().first()
    if row is None:
        return None
    out = dict(row)
    for name, table, cols in (("diagnoses", diagnoses, ("code", "description")),
                              ("procedures", procedures, ("code", "description")),
                              ("medications", medications, ("name", "dose"))):
        rows = conn.execute(sa.select(*[table.c[c] for c in cols]).where(table.c.encounter_id == encounter_id)
                            .order_by(table.c[cols[0]])).mappings()
        out[name] = [dict(r) for r in rows]
    return out


def for_patient(conn, patient_id: str) -> list[dict]:
    ids_ = conn.execute(sa.select(encounters.c.encounter_id).where(encounters.c.patient_id == patient_id)
                        .order_by(encounters.c.created_at)).scalars().all()
    return [snapshot(conn, i) for i in ids_]


_INSERT_ENCOUNTER = prebuilt(encounters.insert())


def book(conn, actor: Actor, encounter_id: str, data: BookEncounter) -> dict:
    """Book for a patient, provider and facility that exist (422 `unknown_reference` otherwise)."""
    if patients.snapshot(conn, data.patient_id) is None:
        raise unknown_reference("patient_id", "patient")
    if not reference.provider_exists(conn, data.provider_id):
        raise unknown_reference("provider_id", "provider")
    if not reference.facility_exists(conn, data.facility_id):
        raise unknown_reference("facility_id", "facility")
    ts = now_iso()
    row = {"encounter_id": encounter_id, "patient_id": data.patient_id, "provider_id": data.provider_id,
           "facility_id": data.facility_id,
           "scheduled_for": data.scheduled_for.astimezone(timezone.utc).isoformat(),
           "reason": data.reason, "status": "booked", "notes": None, "version": 1,
           "created_at": ts, "updated_at": ts}
    conn.execute(_INSERT_ENCOUNTER, row)
    after = {**row, "diagnoses": [], "procedures": [], "medications": []}
    record_write(conn, actor, action="encounter.book", entity="encounter", entity_id=encounter_id, version=1,
                 before=None, after=after, event_type="encounter.booked")
    return {"tracking_id": encounter_id, "status": "accepted"}


def document(conn, actor: Actor, before: dict, data: EncounterNotes) -> dict:
    """Replace the encounter's notes and coded entries; notes are redacted before storage."""
    encounter_id = before["encounter_id"]
    version = before["version"] + 1
    updated = {"notes": data.notes, "status": "documented", "version": version, "updated_at": now_iso()}
    result = conn.execute(encounters.update().where(encounters.c.encounter_id == encounter_id,
                                                    encounters.c.version == before["version"]).values(**updated))
    if result.rowcount != 1:
        raise Conflict("encounter changed concurrently; retry", "version_conflict")
    for table in (diagnoses, procedures, medications):
        conn.execute(table.delete().where(table.c.encounter_id == encounter_id))
    for table, items in ((diagnoses, data.diagnoses), (procedures, data.procedures), (medications, data.medications)):
        unique = {tuple(i.model_dump().values())[0]: i.model_dump() for i in items}
        for item in unique.values():
            conn.execute(table.insert().values(encounter_id=encounter_id, **item))
    after = snapshot(conn, encounter_id)
    record_write(conn, actor, action="encounter.document", entity="encounter", entity_id=encounter_id,
                 version=version, before=before, after=after, event_type="encounter.documented")
    return after


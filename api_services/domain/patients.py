"""Patients: pseudonymized demographics only (synthetic data, no real PHI)."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated, Literal

import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field, field_validator

from api_services.audit import Actor, now_iso, record_write
from api_services.prepared import prebuilt
from api_services.redaction import FreeText
from api_services.tables import patients

Sex = Literal["F", "M", "X"]


class PatientCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"pseudonym": "Example Person", "birth_year": 1980, "sex": "F"}]})

    pseudonym: FreeText(120, pattern=r"^[A-Za-z][A-Za-z .'-]*$")
    birth_year: Annotated[int, Field(strict=True, ge=1900, le=2100, description="Not in the future")]
    sex: Sex

    @field_validator("birth_year")
    @classmethod
    def _not_in_the_future(cls, value: int) -> int:
        this_year = datetime.now(timezone.utc).year
        if value > this_year:
            raise ValueError(f"birth_year must be between 1900 and {this_year}")
        return value


class Patient(BaseModel):
    patient_id: str
    pseudonym: str
    birth_year: int
    sex: str
    mrn: str
    version: int
    created_at: str


class PatientCreated(BaseModel):
    patient_id: str
    status: Literal["created"] = "created"


_PATIENT = prebuilt(sa.select(patients).where(patients.c.patient_id == sa.bindparam("id")))


def snapshot(conn, patient_id: str) -> dict | None:
    row = conn.execute(_PATIENT, {"id": patient_id}).mappings().first()
    return dict(row) if row else None


def create(conn, actor: Actor, patient_id: str, data: PatientCreate, mrn: str | None = None) -> dict:
    row = {"patient_id": patient_id, "pseudonym": data.pseudonym, "birth_year": data.birth_year,
           "sex": data.sex, "mrn": mrn or f"SYN-{patient_id[4:14].upper()}", "version": 1, "created_at": now_iso()}
    conn.execute(patients.insert().values(**row))
    record_write(conn, actor, action="patient.create", entity="patient", entity_id=patient_id, version=1,
                 before=None, after=row, event_type="patient.registered")
    return {"patient_id": patient_id, "status": "created"}

"""Identifier shapes. Encounter and claim ids carry their patient's hash slot."""

from __future__ import annotations

import uuid

PATIENT_ID = r"^pat-[0-9a-f]{32}$"
PROVIDER_ID = r"^prv-[0-9]{4}$"
FACILITY_ID = r"^fac-[0-9]{3}$"
ENCOUNTER_ID = r"^enc-[0-9]{4}-[0-9a-f]{32}$"
CLAIM_ID = r"^clm-[0-9]{4}-[0-9a-f]{32}$"
_NS = uuid.UUID("6f1c1f4e-8c1a-4b59-9d3e-0c5c2b7e9a11")


def new_patient_id(user_id: str | None = None, idempotency_key: str | None = None) -> str:
    """Random, or derived from the idempotency key so a retry lands on the same id and shard."""
    if idempotency_key:
        return "pat-" + uuid.uuid5(_NS, f"{user_id}\x00{idempotency_key}").hex
    return "pat-" + uuid.uuid4().hex


def slotted_id(prefix: str, slot: int, seed: str | None = None) -> str:
    tail = uuid.uuid5(_NS, seed).hex if seed else uuid.uuid4().hex
    return f"{prefix}-{slot:04d}-{tail}"

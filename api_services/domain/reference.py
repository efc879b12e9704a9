"""Providers and facilities: reference data copied to every shard."""

from __future__ import annotations

import sqlalchemy as sa
from pydantic import BaseModel

from api_services.prepared import prebuilt
from api_services.tables import facilities, providers


class Facility(BaseModel):
    facility_id: str
    name: str
    city: str


class Provider(BaseModel):
    provider_id: str
    display_name: str
    specialty: str
    facility_id: str


def list_providers(conn) -> list[dict]:
    return [dict(r) for r in conn.execute(sa.select(providers).order_by(providers.c.provider_id)).mappings()]


def list_facilities(conn) -> list[dict]:
    return [dict(r) for r in conn.execute(sa.select(facilities).order_by(facilities.c.facility_id)).mappings()]


_PROVIDER = prebuilt(sa.select(providers.c.provider_id).where(providers.c.provider_id == sa.bindparam("id")))
_FACILITY = prebuilt(sa.select(facilities.c.facility_id).where(facilities.c.facility_id == sa.bindparam("id")))


def provider_exists(conn, provider_id: str) -> bool:
    return conn.execute(_PROVIDER, {"id": provider_id}).first() is not None


def facility_exists(conn, facility_id: str) -> bool:
    return conn.execute(_FACILITY, {"id": facility_id}).first() is not None


def snapshot_provider(conn, provider_id: str) -> dict | None:
    row = conn.execute(sa.select(providers).where(providers.c.provider_id == provider_id)).mappings().first()
    return dict(row) if row else None


def snapshot_facility(conn, facility_id: str) -> dict | None:
    row = conn.execute(sa.select(facilities).where(facilities.c.facility_id == facility_id)).mappings().first()
    return dict(row) if row else None

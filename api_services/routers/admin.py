"""Admin service, for SREs: shard map, event pipeline state, audit verification and replay."""

from __future__ import annotations

from typing import Literal

import sqlalchemy as sa
from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel

from api_services import integrity
from api_services.auth import Principal, principal, require
from api_services.errors import ERROR_RESPONSES, Unavailable
from api_services.runtime import runtime
from api_services.tables import event_stream, outbox, processed_events
from api_services.telemetry import current_context
from api_services.transactions import run_read

router = APIRouter(prefix="/admin", tags=["admin"], responses=ERROR_RESPONSES)


class ShardState(BaseModel):
    name: str
    ordinal: int
    slot_start: int
    slot_end: int
    backend: Literal["sqlite", "sqlserver", "postgres"]
    status: str = "ok"
    outbox_pending: int | None = None
    events_published: int | None = None
    events_projected: int | None = None


class ShardsView(BaseModel):
    version: int
    slot_count: int
    shards: list[ShardState]


class IntegrityReport(BaseModel):
    ok: bool
    shards: dict[str, dict]


def _pipeline(conn) -> tuple[int, int, int]:
    pending = conn.execute(sa.select(sa.func.count()).select_from(outbox).where(outbox.c.published_at.is_(None))).scalar_one()
    published = conn.execute(sa.select(sa.func.count()).select_from(event_stream)).scalar_one()
    projected = conn.execute(sa.select(sa.func.count()).select_from(processed_events)).scalar_one()
    return pending, published, projected


@router.get("/shards", response_model=ShardsView)
def shards(request: Request, who: Principal = Depends(principal)):
    require(who, "sre")
    rt = runtime(request)
    current_context().shard = "all"
    smap = rt.shard_map
    out = []
    for s in smap.shards:
        state = ShardState(name=s.name, ordinal=s.ordinal, slot_start=s.slots.start, slot_end=s.slots.end,
                           backend=s.backend)
        try:  # one unavailable shard is reported as such, the others still are
            state.outbox_pending, state.events_published, state.events_projected = run_read(
                rt.engines.reporting(s.name), s.name, _pipeline)
        except Unavailable as exc:
            state.status = f"unavailable: {exc.message}"
        out.append(state)
    return ShardsView(version=smap.version, slot_count=smap.slot_count, shards=out)


@router.post("/audit/verify", response_model=IntegrityReport)
def verify_audit(request: Request, who: Principal = Depends(principal)):
    require(who, "sre")
    current_context().shard = "all"
    return integrity.verify_audit(runtime(request).engines)


@router.post("/replay", response_model=IntegrityReport)
def replay(request: Request, who: Principal = Depends(principal)):
    require(who, "sre")
    current_context().shard = "all"
    return integrity.replay(runtime(request).engines)

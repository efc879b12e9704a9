"""Financial KPIs: a read model the projection worker folds from the event stream."""

from __future__ import annotations

import sqlalchemy as sa
from pydantic import BaseModel

from api_services.prepared import prebuilt
from api_services.tables import financial_kpis

KPI_NAMES = ("encounters_booked", "encounters_documented", "claims_submitted", "claims_amount_cents")


class ShardKpis(BaseModel):
    shard: str
    encounters_booked: int = 0
    encounters_documented: int = 0
    claims_submitted: int = 0
    claims_amount_cents: int = 0


class FinancialKpis(BaseModel):
    total: ShardKpis
    shards: list[ShardKpis]
    unavailable_shards: list[str] = []


def deltas(event_type: str, payload: dict) -> dict[str, int]:
    """What one event adds to the KPIs: the projection and `replay` share this fold."""
    if event_type == "encounter.booked":
        return {"encounters_booked": 1}
    if event_type == "encounter.documented":
        return {"encounters_documented": 1}
    if event_type == "claim.submitted":
        return {"claims_submitted": 1, "claims_amount_cents": int(payload["data"]["amount_cents"])}
    return {}


_ADD = prebuilt(financial_kpis.update().where(financial_kpis.c.kpi == sa.bindparam("name"))
                .values(value=financial_kpis.c.value + sa.bindparam("delta")))
_FIRST = prebuilt(financial_kpis.insert())


def apply(conn, changes: dict[str, int]) -> None:
    for kpi, delta in changes.items():
        if not conn.execute(_ADD, {"name": kpi, "delta": delta}).rowcount:
            conn.execute(_FIRST, {"kpi": kpi, "value": delta})


def read(conn) -> dict[str, int]:
    values = {k: 0 for k in KPI_NAMES}
    for row in conn.execute(sa.select(financial_kpis)):
        values[row.kpi] = int(row.value)
    return values

"""The fields of a Drill (and of its PersonaLoad) the report reads, as a pydantic view of the
object's dict: unknown fields are ignored and every field is optional, so a Drill that ended
early (Aborted in Preflight) still renders. Field names follow the Drill contract (camelCase on
the wire)."""

from __future__ import annotations

from datetime import datetime

from pydantic import Field

from pimlab_operator.schema import StatusModel


class Window(StatusModel):
    start: datetime | None = None
    end: datetime | None = None


class Injection(StatusModel):
    name: str
    experiment: str | None = None
    offset_seconds: float | None = None
    fired_at: datetime | None = None
    ended_at: datetime | None = None
    action: str | None = None
    targets: list[str] = []


class TimelineEntry(StatusModel):
    time: datetime
    source: str = ""
    event: str = ""
    detail: str = ""


class Failover(StatusModel):
    shard: str
    from_: str | None = Field(None, alias="from")
    to: str | None = None
    reason: str | None = None
    duration_seconds: float | None = None
    at: datetime | None = None


class Ledger(StatusModel):
    acknowledged: int | None = None
    verified: int | None = None
    lost: int | None = None
    lost_sample: list[str] | None = None


class ShardRecovery(StatusModel):
    shard: str
    outage_seconds: float | None = None
    start: datetime | None = None
    end: datetime | None = None


class Recovery(StatusModel):
    seconds: float | None = None
    shards: list[ShardRecovery] = []


class Budget(StatusModel):
    slo: str
    objective: float | None = None
    bad_events: float | None = None
    total_events: float | None = None
    mean_burn_rate: float | None = None
    burned: float | None = None
    limit: float | None = None
    lifetime_remaining: float | None = None


class JourneyLatency(StatusModel):
    journey: str
    p50: float | None = None
    p95: float | None = None
    p99: float | None = None


class Hypothesis(StatusModel):
    name: str
    observed: float | str | None = None
    limit: float | str | None = None
    met: bool | None = None
    source: str | None = None


class LoadRef(StatusModel):
    name: str | None = None


class DrillStatusView(StatusModel):
    phase: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    deadline: datetime | None = None
    window: Window = Window()
    load: LoadRef = LoadRef()
    injections: list[Injection] = []
    timeline: list[TimelineEntry] = []
    failovers: list[Failover] = []
    ledger: Ledger | None = None
    recovery: Recovery | None = None
    budgets: list[Budget] = []
    latency: list[JourneyLatency] = []
    hypotheses: list[Hypothesis] = []
    verdict: str | None = None
    score: float | None = None
    reason: str | None = None
    message: str | None = None


class Slowest(StatusModel):
    """PersonaLoad status.slowest: the slowest request the engine saw."""

    trace_id: str | None = None
    journey: str | None = None
    step: str | None = None
    ms: float | None = None
    at: datetime | None = None


class DrillView(StatusModel):
    """A Drill object: its name, namespace, Lab and status."""

    name: str
    namespace: str
    lab: str | None = None
    status: DrillStatusView = DrillStatusView()

    @classmethod
    def of(cls, drill: dict) -> DrillView:
        meta = drill.get("metadata") or {}
        lab = (drill.get("spec") or {}).get("labRef")
        if isinstance(lab, dict):  # {name: ...} or a plain name: both read
            lab = lab.get("name")
        return cls(name=meta.get("name", "?"), namespace=meta.get("namespace", "default"), lab=lab,
                   status=DrillStatusView.model_validate(without_nulls(drill.get("status") or {})))


def without_nulls(value):
    """A JSON value with its null fields left out: null and absent mean the same in a status,
    and the view's defaults then apply."""
    if isinstance(value, dict):
        return {k: without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [without_nulls(v) for v in value]
    return value

"""PersonaLoad: an open-model load run of personas doing journeys, once (Job) or on a schedule (CronJob)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import ConfigDict, Field, StringConstraints, model_validator

from pimlab_operator.schema import (
    AGE_COLUMN,
    LIST_SET,
    MESSAGE_COLUMN,
    READY_COLUMN,
    ApiModel,
    CronSchedule,
    CrdInfo,
    Duration,
    HttpUrl,
    Journey,
    ObjectName,
    PrinterColumn,
    Resource,
    ShortName,
    StatusBase,
    StatusModel,
    Text,
    cel,
    duration_seconds,
    list_map,
    rules,
)


class LoadTarget(ApiModel):
    """Where the load goes: a Lab's gateway in this namespace, or any URL."""

    model_config = ConfigDict(
        json_schema_extra=rules(cel("has(self.labRef) != has(self.url)", "target needs exactly one of labRef or url"))
    )

    lab_ref: ObjectName | None = Field(None, description="Name of a Lab in this namespace; its gateway is the target.")
    url: HttpUrl | None = Field(None, description="Base URL of a gateway outside the lab's control.")

    @model_validator(mode="after")
    def _exactly_one(self) -> LoadTarget:
        if (self.lab_ref is None) == (self.url is None):
            raise ValueError("target needs exactly one of labRef or url")
        return self


class ThinkTime(ApiModel):
    """Pause between a persona's steps, drawn uniformly from [min, max]."""

    model_config = ConfigDict(
        json_schema_extra=rules(
            cel("duration(self.min) <= duration(self.max)", "thinkTime.min must not exceed thinkTime.max", field_path=".min")
        )
    )

    min: Duration = Field("1s", description="Shortest pause (default 1s).")
    max: Duration = Field("5s", description="Longest pause, >= min (default 5s).")

    @model_validator(mode="after")
    def _min_not_above_max(self) -> ThinkTime:
        if duration_seconds(self.min) > duration_seconds(self.max):
            raise ValueError("thinkTime.min must not exceed thinkTime.max")
        return self


#: What a persona listed without `journeys` runs (the engine's standard journeys).
STANDARD_JOURNEYS: dict[str, tuple[str, ...]] = {
    "patient": ("registerPatient", "bookEncounter", "reviewEncounter", "checkBilling"),
    "clinician": ("documentEncounter", "reviewEncounter"),
    "admin": ("submitClaim", "readKpis"),
}


class Persona(ApiModel):
    """A kind of user and the journeys it runs."""

    model_config = ConfigDict(
        json_schema_extra=rules(
            cel(
                "has(self.journeys) || self.name in " + str(list(STANDARD_JOURNEYS)),
                "journeys may be left out only for the standard personas patient, clinician and admin",
                field_path=".journeys",
            )
        )
    )

    name: ShortName = Field(description="Persona name (patient, clinician, admin, ...); unique in the list.")
    weight: int = Field(ge=1, le=10000, description="Relative share of arrivals (positive; weights need not sum to 100).")
    journeys: list[Journey] | None = Field(
        None, min_length=1, max_length=7, json_schema_extra=LIST_SET,
        description="Journeys the persona picks from uniformly; unset: the persona's standard journeys"
        " (patient: registerPatient, bookEncounter, reviewEncounter, checkBilling; clinician:"
        " documentEncounter, reviewEncounter; admin: submitClaim, readKpis).",
    )
    think_time: ThinkTime = Field(default_factory=ThinkTime, description="Pause between steps (default 1s..5s).")

    @model_validator(mode="after")
    def _journeys_or_standard(self) -> Persona:
        if self.journeys is None and self.name not in STANDARD_JOURNEYS:
            raise ValueError("journeys may be left out only for the standard personas patient, clinician and admin")
        return self


class Population(ApiModel):
    """The synthetic patients the personas act on."""

    patients: int = Field(10000, ge=1, le=10_000_000, description="Synthetic patients to draw ids from (default 10000).")
    seed: int = Field(42, ge=0, description="Random seed; the same seed gives the same ids and arrivals (default 42).")


class LoadProfile(ApiModel):
    """The arrival-rate shape over time (open model: arrivals do not wait for responses)."""

    model_config = ConfigDict(
        json_schema_extra=rules(
            cel(
                "self.pattern == 'constant' || has(self.peakRate)",
                "profile.peakRate is required when pattern is ramp, spike or diurnal",
                field_path=".peakRate",
            ),
            cel(
                "!has(self.peakRate) || self.peakRate >= self.rate",
                "profile.peakRate must be at least profile.rate: raise peakRate or lower rate",
                field_path=".peakRate",
            ),
        )
    )

    pattern: Literal["constant", "ramp", "spike", "diurnal"] = Field(
        "constant",
        description="constant: `rate`; ramp: rate -> peakRate over the duration; spike: rate with bursts at"
        " peakRate; diurnal: a day's curve between rate and peakRate, compressed into the duration. Default constant.",
    )
    rate: float = Field(gt=0, le=100000, description="Base arrival rate: journeys started per second (a journey is one or"
                      " more requests, so the achieved request rate is higher).")
    peak_rate: float | None = Field(
        None, gt=0, le=100000, description="Highest arrival rate (>= rate); required unless pattern is constant."
    )
    duration: Duration = Field("10m", description="How long a run lasts (default 10m).")
    ramp_up: Duration | None = Field(None, description="Linear warm-up from 0 to `rate` before the pattern starts; unset: none.")

    @model_validator(mode="after")
    def _peak_rate_fits(self) -> LoadProfile:
        if self.pattern != "constant" and self.peak_rate is None:
            raise ValueError("profile.peakRate is required when pattern is ramp, spike or diurnal")
        if self.peak_rate is not None and self.peak_rate < self.rate:
            raise ValueError(f"profile.peakRate ({self.peak_rate}) must be at least profile.rate ({self.rate})")
        return self


class Retries(ApiModel):
    """Client retries, as real clients do them."""

    max: int = Field(0, ge=0, le=10, description="Retries per failed request (default 0).")
    backoff: Duration = Field("200ms", description="First backoff, doubled per retry (default 200ms).")
    jitter: bool = Field(True, description="Randomise backoffs (full jitter), default true.")


class Bursts(ApiModel):
    """Periodic surges on top of the profile."""

    model_config = ConfigDict(
        json_schema_extra=rules(
            cel("duration(self.length) < duration(self.every)", "bursts.length must be shorter than bursts.every", field_path=".length")
        )
    )

    every: Duration = Field(description="Time between burst starts.")
    factor: float = Field(ge=1, le=100, description="Rate multiplier during a burst.")
    length: Duration = Field(description="How long each burst lasts; shorter than `every`.")

    @model_validator(mode="after")
    def _length_below_every(self) -> Bursts:
        if duration_seconds(self.length) >= duration_seconds(self.every):
            raise ValueError("bursts.length must be shorter than bursts.every")
        return self


class FailurePressure(ApiModel):
    """Client-side behaviour that stresses the platform the way bad days do."""

    retries: Retries = Field(default_factory=Retries, description="Client retries with backoff.")
    invalid_request_ratio: float = Field(
        0, ge=0, le=1, description="Share of requests sent malformed on purpose (expect 4xx), 0..1 (default 0)."
    )
    timeout: Duration = Field("2s", description="Client timeout per request (default 2s).")
    bursts: Bursts | None = Field(None, description="Periodic surges; unset: none.")


class Thresholds(ApiModel):
    """Pass/fail criteria for a run; a failed run sets the Ready condition to False."""

    p95: Duration | None = Field(None, description="Highest acceptable p95 latency, e.g. 300ms.")
    p99: Duration | None = Field(None, description="Highest acceptable p99 latency.")
    error_ratio: float | None = Field(None, ge=0, le=1, description="Highest acceptable error ratio, 0..1.")


class LedgerSpec(ApiModel):
    """The write ledger: what the services acknowledged, checked after the load."""

    enabled: bool = Field(
        False, description="Record every acknowledged write (tracking id, Idempotency-Key, shard, time) and the write"
        " outages per shard as the clients see them (default false).")
    verify: bool = Field(
        True, description="After the load, read every acknowledged write back through the API and verify the audit"
        " chain of each shard written to (default true).")


class PersonaLoadSpec(ApiModel):
    """The desired load run."""

    target: LoadTarget = Field(description="Where the load goes: exactly one of labRef or url.")
    personas: list[Persona] = Field(
        min_length=1, max_length=16, description="Personas and their weights; at least one.", json_schema_extra=list_map("name")
    )
    population: Population = Field(default_factory=Population, description="Synthetic patient population.")
    profile: LoadProfile = Field(description="Arrival-rate shape.")
    max_in_flight: int = Field(
        1000, ge=1, le=100000, description="Concurrent requests cap per engine; arrivals over it count as dropped (default 1000)."
    )
    parallelism: int = Field(1, ge=1, le=32, description="Engine pods sharing the rate (Job parallelism), default 1.")
    failure_pressure: FailurePressure | None = Field(None, description="Retries, invalid requests, timeouts, bursts; unset: none.")
    thresholds: Thresholds | None = Field(None, description="Pass/fail criteria; unset: the run only reports.")
    schedule: CronSchedule | None = Field(None, description="Cron schedule for recurring runs (a CronJob); empty: run once (a Job).")
    image: Annotated[str, StringConstraints(max_length=512)] | None = Field(
        None, description="Engine image; unset: the target Lab's image."
    )
    ledger: LedgerSpec | None = Field(None, description="The write ledger and its read-back; unset: off.")

    @model_validator(mode="after")
    def _unique_lists(self) -> PersonaLoadSpec:
        names = [persona.name for persona in self.personas]
        if len(set(names)) != len(names):
            raise ValueError("personas: each persona name may appear once")
        for persona in self.personas:
            if persona.journeys and len(set(persona.journeys)) != len(persona.journeys):
                raise ValueError(f"personas[{persona.name}].journeys: each journey may appear once")
        return self


class LatencySummary(StatusModel):
    """Percentiles in milliseconds, read from HDR histograms merged across the engine pods."""

    p50: float | None = Field(None, ge=0, description="Median, ms.")
    p95: float | None = Field(None, ge=0, description="95th percentile, ms.")
    p99: float | None = Field(None, ge=0, description="99th percentile, ms.")
    max: float | None = Field(None, ge=0, description="Maximum, ms.")


class LoadBreakdown(StatusModel):
    """Counts and latency for one persona, journey or shard."""

    requests: int | None = Field(None, ge=0, description="Requests answered or failed (after retries).")
    errors: int | None = Field(
        None, ge=0, description="Requests with an unexpected outcome (5xx, 429, timeout, connection error, wrong 4xx)."
    )
    latency_ms: LatencySummary | None = Field(
        None, description="Latency from the intended start, ms; unset where a pod had to leave its histogram out."
    )


BreakdownMap = dict[Annotated[str, StringConstraints(max_length=63)], LoadBreakdown]


class ThresholdVerdict(StatusModel):
    """One of spec.thresholds against the merged results."""

    name: Literal["p95", "p99", "errorRatio"] = Field(description="Which threshold.")
    limit: float = Field(ge=0, description="The limit: ms for p95/p99, a ratio for errorRatio.")
    observed: float | None = Field(None, ge=0, description="What the run measured; unset when nothing was measured.")
    met: bool = Field(description="Whether the run stayed within the limit.")


class LoadSummary(LoadBreakdown):
    """The run's results, merged from every engine pod's HDR histograms (never averaged)."""

    pods: int | None = Field(None, ge=0, description="Engine pods whose reports are merged here.")
    stopped: Literal["completed", "count", "signal"] | None = Field(
        None, description="completed: the schedule ran out; count: the arrival limit; signal: stopped (SIGTERM)."
    )
    elapsed_seconds: float | None = Field(None, ge=0, description="Length of the run (the longest pod).")
    scheduled: int | None = Field(None, ge=0, description="Arrivals in the schedule up to the stop.")
    journeys: int | None = Field(None, ge=0, description="Arrivals that started a journey.")
    dropped: int | None = Field(None, ge=0, description="Arrivals or steps not sent because maxInFlight was reached.")
    retries: int | None = Field(None, ge=0, description="Client retries sent.")
    timeouts: int | None = Field(None, ge=0, description="Requests abandoned at the client timeout.")
    invalid_requests: int | None = Field(None, ge=0, description="Requests sent malformed on purpose.")
    error_ratio: float | None = Field(None, ge=0, le=1, description="errors / requests.")
    achieved_rate: float | None = Field(None, ge=0, description="Requests per second actually completed.")
    service_time_ms: LatencySummary | None = Field(None, description="From the last attempt's send to the answer, ms.")
    schedule_lag_ms: LatencySummary | None = Field(None, description="From the intended start to the first send, ms.")
    saturated: bool | None = Field(None, description="Whether the engine itself was the bottleneck (drops or schedule lag).")
    saturation_reason: Text | None = Field(None, description="Why the engine calls itself saturated.")
    thresholds: list[ThresholdVerdict] | None = Field(None, max_length=3, description="Each threshold's verdict.")
    thresholds_met: bool | None = Field(None, description="Whether spec.thresholds held; unset when none are set.")
    by_status: dict[Annotated[str, StringConstraints(max_length=16)], int] | None = Field(
        None, max_length=64, description="Requests per final HTTP status (or timeout, error)."
    )
    approximate: list[Literal["persona", "journey", "shard"]] | None = Field(
        None, max_length=3, description="Breakdowns whose latency is missing: a pod's report had to leave them out (4 KiB)."
    )
    by_persona: BreakdownMap | None = Field(None, max_length=16, description="Per persona.")
    by_journey: BreakdownMap | None = Field(None, max_length=16, description="Per journey.")
    by_shard: BreakdownMap | None = Field(None, max_length=64, description="Per shard.")


ShardName = Annotated[str, StringConstraints(max_length=63)]


class ShardLedger(StatusModel):
    """One shard's acknowledged and lost writes."""

    shard: ShardName = Field(description="The shard the writes went to.")
    acknowledged: int = Field(ge=0, description="Writes the services acknowledged on this shard.")
    lost: int = Field(ge=0, description="Of those, writes the read-back did not find.")


class AuditChain(StatusModel):
    """One shard's audit hash chain, as `/admin/audit/verify` found it after the load."""

    shard: ShardName = Field(description="The shard.")
    ok: bool = Field(description="Whether the chain is intact (false also when it could not be verified).")
    message: Text = Field(description="Events checked, or the problems found, or why it could not be verified.")


class LedgerStatus(StatusModel):
    """The acknowledged writes read back after the load, summed over the engine pods."""

    acknowledged: int = Field(ge=0, description="Distinct writes the services acknowledged (a replay is not a second write).")
    verified: int = Field(ge=0, description="Acknowledged writes the read-back found.")
    lost: int = Field(ge=0, description="Acknowledged writes the read-back did not find (404, or notes at an older version).")
    unverifiable: int = Field(ge=0, description="Acknowledged writes whose read failed after retries (not counted lost).")
    lost_sample: list[Annotated[str, StringConstraints(max_length=64)]] | None = Field(
        None, max_length=10, description="Ids of up to 10 lost writes.")
    shards: list[ShardLedger] | None = Field(None, max_length=64, description="Acknowledged and lost writes per shard.")
    audit_chains: list[AuditChain] | None = Field(None, max_length=64, description="The audit chain of each shard written to.")


class WriteOutage(StatusModel):
    """Writes to a shard failing as the clients saw them: from the send of a failed write (5xx,
    timeout, connection error) to the answer of the next write on the shard, sent after it, that
    was acknowledged (not an idempotent replay); overlapping outages seen by several engine pods
    are one."""

    shard: ShardName = Field(description="The shard.")
    start: datetime = Field(description="When the first failed write was sent.")
    end: datetime | None = Field(None, description="When the next acknowledged write was answered; unset: still failing at the load's end.")
    seconds: float = Field(ge=0, description="From start to end (or to the load's end).")
    failed_writes: int = Field(ge=0, description="Writes that failed during the outage.")


class SlowestRequest(StatusModel):
    """The request with the highest latency (from its intended start), to find in traces and logs."""

    trace_id: Annotated[str, StringConstraints(max_length=32)] = Field(description="The trace id the engine sent in its traceparent.")
    journey: Annotated[str, StringConstraints(max_length=63)] = Field(description="The journey it was a step of.")
    step: Annotated[str, StringConstraints(max_length=100)] = Field(description="Method and route, ids as {id}.")
    ms: float = Field(ge=0, description="Latency, ms.")
    at: datetime = Field(description="Its intended start.")


class PodCounts(StatusModel):
    """The engine pods of the current or last run."""

    expected: int | None = Field(None, ge=0, description="Engine pods the run needs (parallelism).")
    active: int | None = Field(None, ge=0, description="Pods pending or running.")
    succeeded: int | None = Field(None, ge=0, description="Pods that finished with exit code 0.")
    failed: int | None = Field(None, ge=0, description="Pods that failed, were evicted or killed.")
    reported: int | None = Field(None, ge=0, description="Pods whose termination message is a valid engine report.")


class RunRecord(StatusModel):
    """One finished run of a scheduled PersonaLoad."""

    job_name: Annotated[str, StringConstraints(max_length=253)] = Field(description="The run's Job.")
    phase: Literal["Succeeded", "Failed"] = Field(description="How the run ended.")
    reason: Annotated[str, StringConstraints(max_length=64)] | None = Field(None, description="Why, one CamelCase word.")
    started_at: datetime | None = Field(None, description="When the run started.")
    completed_at: datetime | None = Field(None, description="When it ended.")
    requests: int | None = Field(None, ge=0, description="Requests of the run.")
    error_ratio: float | None = Field(None, ge=0, le=1, description="errors / requests.")
    p95_ms: float | None = Field(None, ge=0, description="Merged p95 latency, ms.")
    p99_ms: float | None = Field(None, ge=0, description="Merged p99 latency, ms.")
    thresholds_met: bool | None = Field(None, description="Whether spec.thresholds held.")


class PersonaLoadStatus(StatusBase):
    """The last run as the operator saw it."""

    phase: Literal["Pending", "Scheduled", "Running", "Succeeded", "Failed"] | None = Field(
        None, description="Pending, Scheduled (CronJob waiting), Running, Succeeded or Failed."
    )
    started_at: datetime | None = Field(None, description="When the current or last run started.")
    completed_at: datetime | None = Field(None, description="When the last run finished.")
    job_name: Annotated[str, StringConstraints(max_length=253)] | None = Field(None, description="Job of the current or last run.")
    last_schedule_time: datetime | None = Field(None, description="When the CronJob last started a run.")
    pods: PodCounts | None = Field(None, description="The engine pods of the current or last run.")
    summary: LoadSummary | None = Field(None, description="Results of the last finished run, merged across its pods.")
    recent_runs: list[RunRecord] | None = Field(
        None, max_length=5, description="The last finished runs of a scheduled PersonaLoad, newest first."
    )
    ledger: LedgerStatus | None = Field(None, description="With spec.ledger: the acknowledged writes of the last run, read back.")
    write_outages: list[WriteOutage] | None = Field(
        None, max_length=320, description="With spec.ledger: the write outages per shard of the last run, the 5 longest per shard."
    )
    slowest: SlowestRequest | None = Field(None, description="The slowest request of the last run.")


class PersonaLoad(Resource):
    """A synthetic-load run: personas doing journeys at a rate shape, with optional failure pressure."""

    crd = CrdInfo(
        plural="personaloads",
        short_names=("pload",),
        columns=(
            PrinterColumn("Phase", ".status.phase"),
            PrinterColumn("Pattern", ".spec.profile.pattern", priority=1),
            PrinterColumn("Rate", ".spec.profile.rate", type="number", description="Base arrival rate: journeys/s"),
            PrinterColumn("Achieved", ".status.summary.achievedRate", type="number", description="Requests/s completed (journeys make several requests each)"),
            PrinterColumn("p95 ms", ".status.summary.latencyMs.p95", type="number", description="p95 latency, ms"),
            PrinterColumn("Errors", ".status.summary.errorRatio", type="number", description="Error ratio"),
            PrinterColumn("Schedule", ".spec.schedule", priority=1),
            READY_COLUMN,
            AGE_COLUMN,
            MESSAGE_COLUMN,
        ),
    )

    kind: Literal["PersonaLoad"] = Field("PersonaLoad", description="Always `PersonaLoad`.")
    spec: PersonaLoadSpec
    status: PersonaLoadStatus | None = None

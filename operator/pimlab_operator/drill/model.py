"""Drill: one declared, judged game day on a Lab: a load, ordered faults, SLO hypotheses and a
ledger of every acknowledged write, ending in a verdict and a score.

The load is a PersonaLoad spec and each injection a ChaosExperiment spec, inline and composed
from those kinds' models (their rules ride along); the Drill owns the objects it makes of them.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import ConfigDict, Field, StringConstraints, model_validator

from pimlab_operator.chaos.model import ChaosExperimentSpec
from pimlab_operator.personaload.model import PersonaLoadSpec
from pimlab_operator.schema import (
    AGE_COLUMN,
    LIST_SET,
    MESSAGE_COLUMN,
    ApiModel,
    CrdInfo,
    Duration,
    Journey,
    ObjectName,
    PrinterColumn,
    Resource,
    StatusBase,
    StatusModel,
    Text,
    cel,
    duration_seconds,
    list_map,
    rules,
)

#: A Drill's name is a prefix of its children's (`<drill>-<step name>`, `<drill>-load`).
MAX_NAME_LENGTH = 40
#: Injection step names: DNS labels short enough that `<drill>-<name>` stays a label value.
StepName = Annotated[str, StringConstraints(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=22)]
Phase = Literal["Pending", "Preflight", "Baseline", "Injecting", "Recovering", "Judging", "Passed", "Failed", "Aborted"]


class Baseline(ApiModel):
    """The load alone, before any fault: the steady state the faults are measured against."""

    duration: Duration = Field(description="How long the baseline lasts, e.g. 60s.")


class Injection(ApiModel):
    """One fault, fired `after` the end of the baseline, as a ChaosExperiment the Drill owns
    (named `<drill>-<name>`)."""

    model_config = ConfigDict(
        json_schema_extra=rules(
            cel("!has(self.experiment.schedule) || self.experiment.schedule == ''",
                "inject.experiment.schedule must be empty: a drill fires each injection once",
                field_path=".experiment.schedule"),
        )
    )

    name: StepName = Field(description="Names the step and its ChaosExperiment (`<drill>-<name>`); unique in the drill.")
    after: Duration = Field("0s", description="Offset from the end of the baseline (default 0s); ascending along the steps.")
    experiment: ChaosExperimentSpec = Field(description="The fault, as a ChaosExperiment's spec (no schedule).")

    @model_validator(mode="after")
    def _once(self) -> Injection:
        if self.experiment.schedule:
            raise ValueError("inject.experiment.schedule must be empty: a drill fires each injection once")
        return self


class Recovery(ApiModel):
    """Observation after the last injection: the load goes on while the system recovers."""

    duration: Duration = Field(description="How long recovery is observed after the last injection, e.g. 90s.")


class DrillStep(ApiModel):
    """Exactly one of baseline, inject or recover."""

    model_config = ConfigDict(
        json_schema_extra=rules(
            cel("(has(self.baseline) ? 1 : 0) + (has(self.inject) ? 1 : 0) + (has(self.recover) ? 1 : 0) == 1",
                "each step needs exactly one of baseline, inject or recover"),
        )
    )

    baseline: Baseline | None = Field(None, description="The steady state before the faults.")
    inject: Injection | None = Field(None, description="A fault fired at an offset from the end of the baseline.")
    recover: Recovery | None = Field(None, description="Observation after the last injection.")

    @model_validator(mode="after")
    def _exactly_one(self) -> DrillStep:
        if sum(part is not None for part in (self.baseline, self.inject, self.recover)) != 1:
            raise ValueError("each step needs exactly one of baseline, inject or recover")
        return self


class SloHypothesis(ApiModel):
    """An SLO that must hold through the drill."""

    name: ObjectName = Field(description="Name of an SLO in this namespace.")
    max_budget_burn: float = Field(
        gt=0, le=1, description="Most of the SLO window's error budget the drill may burn, as a fraction (0.05 = 5 %):"
        " mean burn rate over the drill x drill length / SLO window.")
    no_page_after_recovery: bool = Field(True, description="No page alert of this SLO may be firing when the drill is judged (default true).")


class LatencyCeiling(ApiModel):
    """Latency ceilings of one journey, as the drill's clients measured it."""

    model_config = ConfigDict(
        json_schema_extra=rules(cel("has(self.p95Ms) || has(self.p99Ms)", "latency entries need p95Ms or p99Ms"))
    )

    journey: Journey = Field(description="The journey.")
    p95_ms: float | None = Field(None, gt=0, description="Highest acceptable p95, ms.")
    p99_ms: float | None = Field(None, gt=0, description="Highest acceptable p99, ms.")

    @model_validator(mode="after")
    def _a_ceiling(self) -> LatencyCeiling:
        if self.p95_ms is None and self.p99_ms is None:
            raise ValueError("latency entries need p95Ms or p99Ms")
        return self


class Hypotheses(ApiModel):
    """What must hold at the end; each becomes one entry of status.hypotheses."""

    slos: list[SloHypothesis] | None = Field(
        None, max_length=8, json_schema_extra=list_map("name"), description="SLOs that must hold.")
    max_recovery_seconds: float | None = Field(
        None, gt=0, le=3600, description="RTO as the clients saw it: the longest write outage of any shard, seconds.")
    max_lost_writes: int = Field(
        0, ge=0, description="RPO: acknowledged writes that may be missing on read-back (default 0). More fails the drill whatever else held.")
    latency: list[LatencyCeiling] | None = Field(
        None, max_length=7, json_schema_extra=list_map("journey"), description="p95/p99 ceilings per journey.")


class Preflight(ApiModel):
    """Refuse to start (Aborted, nothing injected) when an SLO is already in trouble."""

    min_budget_remaining: float | None = Field(
        None, ge=-10, le=1, description="Refuses when a hypothesis SLO has less of its error budget left (1 = untouched).")
    refuse_while_paging: bool = Field(True, description="Refuses while a page alert of a hypothesis SLO fires (default true).")


class FastBurn(ApiModel):
    """Abort the running drill when one of these SLOs burns faster than `burnRate`."""

    burn_rate: float = Field(gt=0, le=1000, description="Burn rate (worst over the SLO's alert windows) that aborts, e.g. 14.4.")
    slos: list[ObjectName] = Field(min_length=1, max_length=8, json_schema_extra=LIST_SET, description="SLOs watched.")


class Abort(ApiModel):
    """When a drill refuses to start or stops; the chaos kill switch
    (`pim-sre.lab/chaos-paused=true` on the operator's namespace) always aborts a drill with a
    real injection, as it aborts a ChaosExperiment."""

    preflight: Preflight = Field(default_factory=Preflight, description="Checks before the load starts.")
    fast_burn: FastBurn | None = Field(None, description="Abort on a fast burn during the run.")


class CompareTo(ApiModel):
    """Relative criteria against an earlier run."""

    policy: Literal["lastPassed"] = Field(
        "lastPassed", description="lastPassed: the last Passed Drill whose name shares this one's prefix before the last '-'.")
    p95_worse_percent: float = Field(ge=0, le=1000, description="Most a journey's p95 may be worse than in that run, percent.")


class DrillSpec(ApiModel):
    """The desired drill."""

    model_config = ConfigDict(
        json_schema_extra=rules(
            cel("!has(self.load.schedule) || self.load.schedule == ''",
                "load.schedule must be empty: the drill runs its load once", field_path=".load.schedule"),
            cel("!has(self.load.target.url) && (!has(self.load.target.labRef) || self.load.target.labRef == self.labRef)",
                "load.target.labRef must equal labRef: the drill's load goes to its Lab", field_path=".load.target"),
            cel("has(self.steps[0].baseline) && has(self.steps[size(self.steps) - 1].recover)",
                "steps must start with a baseline and end with a recover", field_path=".steps"),
            cel("self.steps.filter(s, has(s.baseline)).size() == 1 && self.steps.filter(s, has(s.recover)).size() == 1",
                "steps hold exactly one baseline and one recover", field_path=".steps"),
            cel("self.steps.filter(s, has(s.inject)).map(s, duration(s.inject.after)).isSorted()",
                "inject offsets (after) must be ascending along the steps", field_path=".steps"),
            cel("self.steps.all(a, !has(a.inject) ||"
                " self.steps.filter(b, has(b.inject) && b.inject.name == a.inject.name).size() == 1)",
                "inject names must be unique", field_path=".steps"),
        )
    )

    lab_ref: ObjectName = Field(description="The Lab drilled, in this namespace.")
    load: PersonaLoadSpec = Field(
        description="The load, as a PersonaLoad's spec (no schedule; target.labRef, if given, equals labRef). The drill"
        " sets its duration to cover the whole run and turns its ledger on.")
    steps: list[DrillStep] = Field(
        min_length=3, max_length=12, description="A baseline, one or more injections, a recover, in this order.")
    hypotheses: Hypotheses = Field(default_factory=Hypotheses, description="What must hold, judged at the end.")
    abort: Abort = Field(default_factory=Abort, description="Preflight refusal and fast-burn abort.")
    compare_to: CompareTo | None = Field(None, description="Relative criteria against the last passed drill of the same prefix.")
    timeout: Duration = Field("30m", description="Deadline from the start: a drill still running then is Aborted (DeadlineExceeded). Default 30m.")

    @model_validator(mode="after")
    def _shape(self) -> DrillSpec:
        if self.load.schedule:
            raise ValueError("load.schedule must be empty: the drill runs its load once")
        if self.load.target.url or (self.load.target.lab_ref and self.load.target.lab_ref != self.lab_ref):
            raise ValueError("load.target.labRef must equal labRef: the drill's load goes to its Lab")
        if self.steps[0].baseline is None or self.steps[-1].recover is None:
            raise ValueError("steps must start with a baseline and end with a recover")
        if sum(s.baseline is not None for s in self.steps) != 1 or sum(s.recover is not None for s in self.steps) != 1:
            raise ValueError("steps hold exactly one baseline and one recover")
        injections = self.injections()
        offsets = [duration_seconds(i.after) for i in injections]
        if offsets != sorted(offsets):
            raise ValueError("inject offsets (after) must be ascending along the steps")
        names = [i.name for i in injections]
        if len(set(names)) != len(names):
            raise ValueError("inject names must be unique")
        return self

    def injections(self) -> list[Injection]:
        return [s.inject for s in self.steps if s.inject is not None]

    def baseline_seconds(self) -> float:
        return duration_seconds(next(s.baseline for s in self.steps if s.baseline).duration)

    def recover_seconds(self) -> float:
        return duration_seconds(next(s.recover for s in self.steps if s.recover).duration)

    def planned_seconds(self) -> float:
        """Baseline start to the end of recovery: baseline + the last offset + recovery."""
        last = max((duration_seconds(i.after) for i in self.injections()), default=0.0)
        return self.baseline_seconds() + last + self.recover_seconds()


# ---- status ----------------------------------------------------------------------------------


class DrillWindow(StatusModel):
    """The drill's own time range: every Prometheus figure of the drill is taken over it."""

    start: datetime | None = Field(None, description="Baseline start (the load's start plus its ramp-up).")
    end: datetime | None = Field(None, description="End of recovery.")


class LoadRef(StatusModel):
    """The PersonaLoad the drill owns."""

    name: Annotated[str, StringConstraints(max_length=253)] = Field(description="Its name.")


class InjectionRecord(StatusModel):
    """One injection: recorded (name, firedAt) before its ChaosExperiment is created, so a
    restart never fires it again."""

    name: StepName = Field(description="The inject step.")
    experiment: Annotated[str, StringConstraints(max_length=253)] = Field(description="Its ChaosExperiment.")
    offset_seconds: float = Field(ge=0, description="Offset from the end of the baseline, seconds.")
    fired_at: datetime = Field(description="When the drill created the experiment.")
    ended_at: datetime | None = Field(None, description="When the experiment ended (or was found missing).")
    action: Annotated[str, StringConstraints(max_length=32)] = Field(description="podKill, containerKill, sqlFailover, ...")
    targets: list[Annotated[str, StringConstraints(max_length=253)]] | None = Field(
        None, max_length=100, description="Pods (or the Shard) the fault hit, from the experiment's status.")
    outcome: Annotated[str, StringConstraints(max_length=32)] | None = Field(
        None, description="The experiment's phase when it ended: Completed, DryRun, Aborted, Failed, Missing.")


class TimelineEntry(StatusModel):
    """One event of the drill or of a child, merged into one timeline."""

    time: datetime = Field(description="When it happened.")
    source: Annotated[str, StringConstraints(max_length=300)] = Field(
        description="Drill, ChaosExperiment/<name>, Shard/<name> or PersonaLoad/<name>.")
    event: Annotated[str, StringConstraints(max_length=64)] = Field(description="What happened, one CamelCase word.")
    detail: Text | None = Field(None, description="What exactly.")


class FailoverSeen(StatusModel):
    """A Shard failover inside the drill's window, from the Shard's status."""

    shard: Annotated[str, StringConstraints(max_length=253)] = Field(description="The Shard.")
    from_: Annotated[str, StringConstraints(max_length=253)] = Field(alias="from", description="Primary before.")
    to: Annotated[str, StringConstraints(max_length=253)] = Field(description="Primary after.")
    reason: Annotated[str, StringConstraints(max_length=128)] = Field(description="Why, as the Shard recorded it.")
    duration_seconds: float | None = Field(None, ge=0, description="How long the failover took, seconds.")
    at: datetime = Field(description="When it started.")


class LedgerFigures(StatusModel):
    """The engine's write ledger, copied from the PersonaLoad's status."""

    acknowledged: int | None = Field(None, ge=0, description="Writes the services acknowledged.")
    verified: int | None = Field(None, ge=0, description="Of those, read back intact.")
    lost: int | None = Field(None, ge=0, description="Acknowledged and missing on read-back.")
    lost_sample: list[Annotated[str, StringConstraints(max_length=253)]] | None = Field(
        None, max_length=10, description="Tracking ids of some lost writes.")
    unverifiable: int | None = Field(None, ge=0, description="Acknowledged writes whose read-back itself failed.")
    audit_chains_checked: int | None = Field(None, ge=0, description="Shards whose audit chain was verified.")
    broken_audit_chains: list[Annotated[str, StringConstraints(max_length=300)]] | None = Field(
        None, max_length=16, description="Shards whose audit chain did not verify, with the reason.")


class ShardOutage(StatusModel):
    """The longest write outage the clients saw on one shard."""

    shard: Annotated[str, StringConstraints(max_length=253)] = Field(description="The shard.")
    outage_seconds: float = Field(ge=0, description="From a failed write to the next acknowledged one, seconds.")
    start: datetime | None = Field(None, description="The first failed write.")
    end: datetime | None = Field(None, description="The next acknowledged write.")


class RecoveryFigures(StatusModel):
    """RTO as the clients saw it."""

    seconds: float | None = Field(None, ge=0, description="The longest write outage of any shard, seconds.")
    shards: list[ShardOutage] | None = Field(None, max_length=64, description="Per shard.")


class BudgetFigures(StatusModel):
    """What the drill cost one SLO, over the drill's own window (docs/drills.md)."""

    slo: Annotated[str, StringConstraints(max_length=253)] = Field(description="The SLO.")
    objective: float | None = Field(None, description="Its objective, percent.")
    bad_events: float | None = Field(None, ge=0, description="Bad events in the drill's window.")
    total_events: float | None = Field(None, ge=0, description="All events in the drill's window.")
    mean_burn_rate: float | None = Field(None, ge=0, description="Error ratio over the drill / the error budget (1 = on budget).")
    burned: float | None = Field(None, ge=0, description="Share of the SLO window's budget the drill burned: mean burn rate x drill length / SLO window.")
    limit: float | None = Field(None, description="The hypothesis' maxBudgetBurn.")
    lifetime_remaining: float | None = Field(
        None, description="The SLO's own status figure: budget left over whatever history Prometheus holds (a young lab's is"
        " the drill's own ratio, not a month's).")


class JourneyLatency(StatusModel):
    """A journey's latency over the drill, ms, from the PersonaLoad's summary."""

    journey: Annotated[str, StringConstraints(max_length=63)] = Field(description="The journey.")
    p50: float | None = Field(None, ge=0, description="Median, ms.")
    p95: float | None = Field(None, ge=0, description="95th percentile, ms.")
    p99: float | None = Field(None, ge=0, description="99th percentile, ms.")


class HypothesisResult(StatusModel):
    """One hypothesis judged."""

    name: Annotated[str, StringConstraints(max_length=300)] = Field(description="e.g. slo/encounter-booking-availability/budget, maxRecoverySeconds.")
    observed: float | None = Field(None, description="What the drill measured; unset: nothing to measure (not met).")
    limit: float = Field(description="The limit from spec.hypotheses (or compareTo).")
    met: bool = Field(description="Whether it held.")
    source: Text | None = Field(None, description="Where the observed figure comes from: the object and field, or the PromQL.")


class DrillStatus(StatusBase):
    """The run as the operator saw it, and its verdict."""

    phase: Phase | None = Field(
        None, description="Pending, Preflight, Baseline, Injecting, Recovering, Judging, then Passed, Failed or Aborted.")
    started_at: datetime | None = Field(None, description="When the drill left Pending.")
    finished_at: datetime | None = Field(None, description="When it reached Passed, Failed or Aborted.")
    deadline: datetime | None = Field(None, description="startedAt + spec.timeout.")
    window: DrillWindow | None = Field(None, description="The drill's own time range.")
    load: LoadRef | None = Field(None, description="The owned PersonaLoad.")
    injections: list[InjectionRecord] | None = Field(None, max_length=10, description="Each injection, as fired.")
    timeline: list[TimelineEntry] | None = Field(None, max_length=200, description="The drill's and its children's events, oldest first.")
    failovers: list[FailoverSeen] | None = Field(None, max_length=32, description="Shard failovers inside the window.")
    ledger: LedgerFigures | None = Field(None, description="The write ledger, from the PersonaLoad.")
    recovery: RecoveryFigures | None = Field(None, description="RTO as the clients saw it.")
    budgets: list[BudgetFigures] | None = Field(None, max_length=8, description="Budget burned per hypothesis SLO.")
    latency: list[JourneyLatency] | None = Field(None, max_length=16, description="Per journey, from the PersonaLoad.")
    hypotheses: list[HypothesisResult] | None = Field(None, max_length=64, description="Each hypothesis, judged.")
    verdict: Literal["Passed", "Failed", "Aborted"] | None = Field(None, description="The outcome.")
    score: int | None = Field(None, ge=0, le=100, description="0..100 (docs/drills.md).")
    reason: Annotated[str, StringConstraints(max_length=64)] | None = Field(None, description="Why the drill is where it is, one CamelCase word.")
    message: Text | None = Field(None, description="The same, for humans.")


class Drill(Resource):
    """A declared, judged game day: load, faults, SLO hypotheses, recovery and a write ledger."""

    crd = CrdInfo(
        plural="drills",
        short_names=("dr",),
        columns=(
            PrinterColumn("Phase", ".status.phase"),
            PrinterColumn("Verdict", ".status.verdict"),
            PrinterColumn("Score", ".status.score", type="integer", description="0..100"),
            PrinterColumn("RTO s", ".status.recovery.seconds", type="number", description="Longest client-seen write outage"),
            PrinterColumn("Lost", ".status.ledger.lost", type="integer", description="Acknowledged writes lost"),
            AGE_COLUMN,
            PrinterColumn("Ready", '.status.conditions[?(@.type=="Ready")].status', priority=1,
                          description="Whether the drill passed"),
            MESSAGE_COLUMN,
        ),
        root_rules=(cel(f"size(self.metadata.name) <= {MAX_NAME_LENGTH}",
                        f"metadata.name: a Drill's name is at most {MAX_NAME_LENGTH} characters (its children are"
                        " named after it)"),),
    )

    kind: Literal["Drill"] = Field("Drill", description="Always `Drill`.")
    spec: DrillSpec
    status: DrillStatus | None = None

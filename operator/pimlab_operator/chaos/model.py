"""ChaosExperiment: one fault, bounded by a blast radius, tied to an ADR or ticket, optionally a dry run."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import ConfigDict, Field, StringConstraints, model_validator

from pimlab_operator.chaos.cron import parse_cron
from pimlab_operator.schema import (
    AGE_COLUMN,
    MESSAGE_COLUMN,
    READY_COLUMN,
    ApiModel,
    CronSchedule,
    CrdInfo,
    Duration,
    HttpUrl,
    LabelSelector,
    ObjectName,
    ObjectRef,
    PrinterColumn,
    Resource,
    StatusBase,
    StatusModel,
    Text,
    cel,
    list_map,
    rules,
)

Action = Literal["podKill", "containerKill", "sqlFailover", "networkDelay", "networkLoss", "networkPartition", "cpuStress"]
#: Actions the operator carries out itself (the rest are Chaos Mesh objects).
OWN_ACTIONS = ("podKill", "containerKill", "sqlFailover")
REFERENCE_PATTERN = r"^$|^(ADR-[0-9]+|[A-Z][A-Z0-9]+-[0-9]+|https?://\S+)$"
PERCENT_PATTERN = r"^(100|[0-9]{1,2})(\.[0-9]+)?$"
#: Parameters that only network and stress faults use (Chaos Mesh renders them).
FAULT_PARAMETERS = ("latency", "jitter", "loss", "direction", "cpuWorkers", "cpuLoad")


class ChaosSelector(LabelSelector):
    """Pods to pick targets from; must narrow the choice (an empty selector would match every pod)."""

    model_config = ConfigDict(
        json_schema_extra=rules(
            cel(
                "(has(self.matchLabels) && size(self.matchLabels) > 0) ||"
                " (has(self.matchExpressions) && size(self.matchExpressions) > 0)",
                "target.selector needs matchLabels or matchExpressions: an empty selector would pick any pod",
            )
        )
    )

    namespace: Annotated[str, StringConstraints(max_length=63)] | None = Field(
        None, description="Namespace of the pods; unset: the experiment's namespace."
    )

    @model_validator(mode="after")
    def _not_empty(self) -> ChaosSelector:
        if not self.match_labels and not self.match_expressions:
            raise ValueError("target.selector needs matchLabels or matchExpressions")
        return self


class ChaosTarget(ApiModel):
    """What the fault hits: the pods of one Shard, or pods picked by labels."""

    model_config = ConfigDict(
        json_schema_extra=rules(
            cel("has(self.shardRef) != has(self.selector)", "target needs exactly one of shardRef or selector"),
            cel(
                "!(self.mode in ['fixed', 'fixedPercent']) || has(self.value)",
                "target.value is required when mode is fixed or fixedPercent",
                field_path=".value",
            ),
            cel(
                "self.mode != 'fixedPercent' || !has(self.value) || self.value <= 100",
                "target.value is a percentage (1..100) when mode is fixedPercent",
                field_path=".value",
            ),
        )
    )

    shard_ref: ObjectName | None = Field(None, description="Name of a Shard in this namespace.")
    selector: ChaosSelector | None = Field(None, description="Pods picked by labels.")
    mode: Literal["one", "fixed", "fixedPercent", "all"] = Field(
        "one", description="How many matching pods to hit: one (random), fixed (value), fixedPercent (value %), all. Default one."
    )
    value: int | None = Field(None, ge=1, le=1000, description="Pod count (fixed) or percentage (fixedPercent).")

    @model_validator(mode="after")
    def _one_kind_of_target(self) -> ChaosTarget:
        if (self.shard_ref is None) == (self.selector is None):
            raise ValueError("target needs exactly one of shardRef or selector")
        if self.mode in ("fixed", "fixedPercent") and self.value is None:
            raise ValueError("target.value is required when mode is fixed or fixedPercent")
        if self.mode == "fixedPercent" and self.value is not None and self.value > 100:
            raise ValueError("target.value is a percentage (1..100) when mode is fixedPercent")
        return self


class BlastRadius(ApiModel):
    """Upper bounds on the planned targets; the experiment refuses to inject when they are exceeded."""

    max_pods: int = Field(1, ge=1, le=1000, description="Most pods one run may hit, >= 1 (default 1).")
    max_percent: int = Field(
        34, ge=1, le=100, description="Most pods one run may hit, as a percentage of the matching pods, 1..100 (default 34)."
    )


class AbortCondition(ApiModel):
    """Stop injecting, clean up and abort when an SLO burns its budget this fast, or has this
    little left. Read from Prometheus while the run lasts; unreadable during a real run aborts."""

    model_config = ConfigDict(
        json_schema_extra=rules(
            cel(
                "has(self.burnRateAbove) || has(self.budgetRemainingBelow)",
                "abortIf entries need burnRateAbove or budgetRemainingBelow (or both)",
            )
        )
    )

    slo_ref: ObjectName = Field(description="Name of an SLO in this namespace.")
    burn_rate_above: float | None = Field(
        None, gt=0, le=1000,
        description="Aborts when the SLO's worst burn rate over its alert windows (5m..6h; 14.4 = a 30d budget"
        " gone in ~2 days) exceeds this.",
    )
    budget_remaining_below: float | None = Field(
        None, ge=-10, le=1, description="Aborts when the share of the error budget left (1 = untouched) drops below this."
    )

    @model_validator(mode="after")
    def _has_threshold(self) -> AbortCondition:
        if self.burn_rate_above is None and self.budget_remaining_below is None:
            raise ValueError("abortIf entries need burnRateAbove or budgetRemainingBelow (or both)")
        return self


class Probe(ApiModel):
    """A steady-state check: an HTTP GET the operator makes before injecting and on every resync
    while the run recovers; `failureThreshold` failures in a row abort the run."""

    name: ObjectName = Field(description="Names the probe in the timeline and the abort reason.")
    url: HttpUrl = Field(description="GET from the operator's network; any 2xx/3xx passes.")
    timeout_seconds: float = Field(2, gt=0, le=30, description="Per request (default 2).")
    failure_threshold: int = Field(1, ge=1, le=20, description="Consecutive failures that abort (default 1).")


class ProbeState(StatusModel):
    """A probe's consecutive failures in the current run."""

    name: ObjectName = Field(description="The probe.")
    consecutive_failures: int = Field(ge=0, description="Failures in a row.")
    last_error: Text | None = Field(None, description="What the last failure was.")


class ChaosParameters(ApiModel):
    """Action-specific knobs; network and stress parameters go to Chaos Mesh."""

    model_config = ConfigDict(
        json_schema_extra=rules(
            cel("!has(self.jitter) || has(self.latency)", "parameters.jitter needs parameters.latency", field_path=".jitter")
        )
    )

    latency: Duration | None = Field(None, description="networkDelay: added delay, e.g. 200ms.")
    jitter: Duration | None = Field(None, description="networkDelay: delay variation, e.g. 50ms.")
    loss: Annotated[str, StringConstraints(pattern=PERCENT_PATTERN, max_length=8)] | None = Field(
        None, description="networkLoss: percentage of packets dropped, as a string such as \"10\"."
    )
    direction: Literal["to", "from", "both"] | None = Field(
        None, description="networkDelay/networkLoss/networkPartition: traffic direction; unset: to."
    )
    cpu_workers: int | None = Field(None, ge=1, le=64, description="cpuStress: stressor threads.")
    cpu_load: int | None = Field(None, ge=1, le=100, description="cpuStress: load per worker, percent.")
    grace_period_seconds: int | None = Field(
        None, ge=0, le=300, description="podKill: termination grace period; unset: 0 (a hard kill)."
    )
    container: Annotated[str, StringConstraints(max_length=63)] | None = Field(
        None, description="containerKill: the container whose main process is killed; unset: the pod's first container."
    )
    failover_mode: Literal["switchover", "fencedFailover"] | None = Field(
        None, description="sqlFailover: switchover (planned, the Shard's manager promotes a caught-up secondary;"
        " default) or fencedFailover (the primary pod is killed and the manager fences it and promotes)."
    )
    switchover_to: Annotated[str, StringConstraints(max_length=253)] | None = Field(
        None, description="sqlFailover switchover: the secondary pod to promote; unset: the first streaming secondary."
    )

    @model_validator(mode="after")
    def _jitter_needs_latency(self) -> ChaosParameters:
        if self.jitter is not None and self.latency is None:
            raise ValueError("parameters.jitter needs parameters.latency")
        return self


def _requires(action: str, parameter: str) -> dict[str, str]:
    """A rule: `action` cannot run without `parameters.<parameter>`."""
    return cel(
        f"self.action != '{action}' || (has(self.parameters) && has(self.parameters.{parameter}))",
        f"parameters.{parameter} is required when action is {action}",
        field_path=f".parameters.{parameter}",
    )


_NO_FAULT_PARAMETERS = " && ".join(f"!has(self.parameters.{name})" for name in FAULT_PARAMETERS)


class ChaosExperimentSpec(ApiModel):
    """The desired experiment."""

    model_config = ConfigDict(
        json_schema_extra=rules(
            cel(
                "self.dryRun || (has(self.reference) && self.reference != '')",
                "reference (an ADR or ticket, e.g. ADR-012) is required unless dryRun is true",
                field_path=".reference",
            ),
            cel(
                "self.action != 'sqlFailover' || has(self.target.shardRef)",
                "sqlFailover needs target.shardRef: it fails over one Shard's availability group",
                field_path=".target",
            ),
            _requires("networkDelay", "latency"),
            _requires("networkLoss", "loss"),
            _requires("cpuStress", "cpuLoad"),
            cel(
                f"!(self.action in ['podKill', 'containerKill', 'sqlFailover']) || !has(self.parameters) || ({_NO_FAULT_PARAMETERS})",
                "parameters latency, jitter, loss, direction, cpuWorkers and cpuLoad apply only to network and"
                " cpuStress actions: remove them for podKill, containerKill and sqlFailover",
                field_path=".parameters",
            ),
            cel(
                "self.action == 'podKill' || !has(self.parameters) || !has(self.parameters.gracePeriodSeconds)",
                "parameters.gracePeriodSeconds applies only to podKill",
                field_path=".parameters",
            ),
            cel(
                "self.action == 'containerKill' || !has(self.parameters) || !has(self.parameters.container)",
                "parameters.container applies only to containerKill",
                field_path=".parameters",
            ),
            cel(
                "self.action == 'sqlFailover' || !has(self.parameters) ||"
                " (!has(self.parameters.failoverMode) && !has(self.parameters.switchoverTo))",
                "parameters.failoverMode and parameters.switchoverTo apply only to sqlFailover",
                field_path=".parameters",
            ),
            cel(
                "!has(self.parameters) || !has(self.parameters.switchoverTo) ||"
                " !has(self.parameters.failoverMode) || self.parameters.failoverMode == 'switchover'",
                "parameters.switchoverTo applies only to failoverMode switchover",
                field_path=".parameters.switchoverTo",
            ),
            cel(
                "!has(self.concurrencyPolicy) || (has(self.schedule) && self.schedule != '')",
                "concurrencyPolicy applies only to a scheduled experiment (set schedule)",
                field_path=".concurrencyPolicy",
            ),
        )
    )

    action: Action = Field(
        description="podKill (API delete), containerKill (SIGKILL of the main process through the node's CRI)"
        " and sqlFailover are done by the operator; networkDelay, networkLoss,"
        " networkPartition and cpuStress become Chaos Mesh objects (when its CRDs exist)."
    )
    target: ChaosTarget = Field(description="What to hit: exactly one of shardRef or selector.")
    blast_radius: BlastRadius = Field(default_factory=BlastRadius, description="Upper bounds on the targets (default 1 pod, 34%).")
    duration: Duration = Field("5m", description="How long the fault lasts, or recovery is watched for podKill/sqlFailover (default 5m).")
    dry_run: bool = Field(
        True, description="Only plan: list the targets in status.plannedTargets and inject nothing. Default true, so a fault is always opted into."
    )
    reference: Annotated[str, StringConstraints(pattern=REFERENCE_PATTERN, max_length=256)] | None = Field(
        None, description="ADR (ADR-012), ticket (OPS-123) or URL justifying the experiment; required unless dryRun."
    )
    abort_if: list[AbortCondition] | None = Field(
        None, max_length=8, description="SLO burn rates that abort the run.", json_schema_extra=list_map("sloRef")
    )
    probes: list[Probe] | None = Field(
        None, max_length=8, json_schema_extra=list_map("name"),
        description="HTTP steady-state probes; failing one (failureThreshold times in a row) aborts the run.",
    )
    parameters: ChaosParameters | None = Field(None, description="Action-specific knobs.")
    schedule: CronSchedule | None = Field(
        None, description="Cron schedule (UTC, 5 fields or @hourly/@daily/...) for recurring runs; empty: run once."
    )
    concurrency_policy: Literal["Forbid", "Replace"] | None = Field(
        None, description="With schedule: when a run is due while the last one still runs, Forbid skips the new run"
        " (default), Replace aborts the running one (cleaning up) and starts the new one."
    )

    @model_validator(mode="after")
    def _action_fits(self) -> ChaosExperimentSpec:
        params = self.parameters or ChaosParameters()
        set_fields = params.model_dump(by_alias=True, exclude_none=True)
        if not self.dry_run and not self.reference:
            raise ValueError("reference (an ADR or ticket) is required unless dryRun is true")
        if self.action == "sqlFailover" and self.target.shard_ref is None:
            raise ValueError("sqlFailover needs target.shardRef")
        for action, parameter in (("networkDelay", "latency"), ("networkLoss", "loss"), ("cpuStress", "cpuLoad")):
            if self.action == action and parameter not in set_fields:
                raise ValueError(f"parameters.{parameter} is required when action is {action}")
        if self.action in OWN_ACTIONS and set(set_fields) & set(FAULT_PARAMETERS):
            raise ValueError("network and cpuStress parameters apply only to those actions")
        if self.action != "podKill" and "gracePeriodSeconds" in set_fields:
            raise ValueError("parameters.gracePeriodSeconds applies only to podKill")
        if self.action != "containerKill" and "container" in set_fields:
            raise ValueError("parameters.container applies only to containerKill")
        if self.action != "sqlFailover" and set(set_fields) & {"failoverMode", "switchoverTo"}:
            raise ValueError("parameters.failoverMode and parameters.switchoverTo apply only to sqlFailover")
        if params.switchover_to and params.failover_mode not in (None, "switchover"):
            raise ValueError("parameters.switchoverTo applies only to failoverMode switchover")
        if self.schedule:
            parse_cron(self.schedule)  # a CronError is a ValueError: the field and why
        if self.concurrency_policy is not None and not self.schedule:
            raise ValueError("concurrencyPolicy applies only to a scheduled experiment (set schedule)")
        return self


class TimelineEvent(StatusModel):
    """One step of a run."""

    time: datetime = Field(description="When it happened.")
    event: Annotated[str, StringConstraints(max_length=64)] = Field(
        description="Planned, Injected, Recovered, Aborted, Completed, ..."
    )
    detail: Text | None = Field(None, description="What exactly, e.g. which pod was deleted.")


class ChaosExperimentStatus(StatusBase):
    """The plan and the outcome of the last run."""

    phase: Literal["Pending", "Scheduled", "DryRun", "Running", "Recovering", "Completed", "Aborted", "Failed"] | None = Field(
        None, description="Pending, Scheduled (between runs), DryRun (targets planned, nothing injected), Running (injecting), Recovering, Completed, Aborted or Failed."
    )
    planned_targets: list[Annotated[str, StringConstraints(max_length=253)]] | None = Field(
        None, max_length=1000, description="Pods the run hits (or would hit, in a dry run)."
    )
    timeline: list[TimelineEvent] | None = Field(None, max_length=100, description="Injection and recovery steps, oldest first.")
    started_at: datetime | None = Field(None, description="When the run started.")
    completed_at: datetime | None = Field(None, description="When the run ended.")
    recovery_seconds: float | None = Field(None, ge=0, description="Seconds from injection until the target was healthy again.")
    verdict: Literal["Passed", "Failed", "Inconclusive"] | None = Field(
        None, description="Passed: recovered and no abort condition fired; Failed: did not; Inconclusive: dry run or no data."
    )
    abort_reason: Text | None = Field(None, description="Why the run was aborted, when it was.")
    generated_objects: list[ObjectRef] | None = Field(None, max_length=16, description="Chaos Mesh objects created for the run.")
    affected_targets: list[Annotated[str, StringConstraints(max_length=253)]] | None = Field(
        None, max_length=1000, description="Pods (or the Shard) the fault was actually injected into."
    )
    probes: list[ProbeState] | None = Field(None, max_length=8, description="Each probe's failures in a row, this run.")
    runs: int | None = Field(None, ge=0, description="Runs started so far (a scheduled experiment runs many times).")
    last_schedule_time: datetime | None = Field(None, description="When the last scheduled run was due.")
    next_run_at: datetime | None = Field(None, description="When the next scheduled run is due.")


class ChaosExperiment(Resource):
    """A bounded, referenced fault injection: pod kill, SQL failover, network or CPU fault."""

    crd = CrdInfo(
        plural="chaosexperiments",
        short_names=("chaosexp", "cx"),
        columns=(
            PrinterColumn("Action", ".spec.action"),
            PrinterColumn("Dry Run", ".spec.dryRun", type="boolean"),
            PrinterColumn("Phase", ".status.phase"),
            PrinterColumn("Verdict", ".status.verdict"),
            PrinterColumn("Recovery s", ".status.recoverySeconds", type="number", priority=1),
            PrinterColumn("Reference", ".spec.reference", priority=1),
            READY_COLUMN,
            AGE_COLUMN,
            MESSAGE_COLUMN,
        ),
    )

    kind: Literal["ChaosExperiment"] = Field("ChaosExperiment", description="Always `ChaosExperiment`.")
    spec: ChaosExperimentSpec
    status: ChaosExperimentStatus | None = None

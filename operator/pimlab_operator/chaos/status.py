"""A ChaosExperiment's run as a small state machine kept in its status, so it survives operator
restarts; each transition is a pure function from the status (and what the cluster shows) to
the next status and what to do:

(new) -> DryRun | Aborted (governance refused it) | Running -> Recovering -> Completed, or
Aborted (kill switch, abortIf, probes, replaced) from Running/Recovering. A scheduled experiment
waits in Scheduled between runs. The intention (phase Running) is written before anything is
deleted or applied, and a run found in Running after a restart is never injected again. What a
fault leaves behind (Chaos Mesh objects, a switchover request on a Shard) is held by a
finalizer until it is cleaned up (`desired.needs_cleanup`).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from pimlab_operator.chaos.desired import (
    CHAOS_MESH,
    FINALIZER,
    alive,
    chaos_mesh_children,
    failover_mode,
    in_target,
    plan,
    switchover_target,
    target_namespace,
)
from pimlab_operator.chaos.model import ChaosExperimentSpec, ChaosExperimentStatus, TimelineEvent
from pimlab_operator.conditions import Condition, now
from pimlab_operator.objects import pod_ready
from pimlab_operator.schema import ObjectRef, duration_seconds

TERMINAL = ("DryRun", "Completed", "Aborted", "Failed")
ACTIVE = ("Running", "Recovering")
#: The timeline keeps this many entries, the newest (the CRD's maxItems).
TIMELINE_LENGTH = 100


@dataclass
class Step:
    """What the handler must write (first) and then do."""

    status: ChaosExperimentStatus
    conditions: list[Condition]
    action: str | None = None  # "deletePods" | "killContainers" | "requestSwitchover" | "applyChaosMesh"
    children: list[dict] = field(default_factory=list)


def previous(body: dict) -> ChaosExperimentStatus:
    """The status as stored (keys of other writers are ignored)."""
    return ChaosExperimentStatus.model_validate(body.get("status") or {})


def fault_active(body: dict) -> bool:
    """Whether the experiment's run is in flight: from its intention (Running) through recovery,
    and until what the fault left behind is cleaned up (the finalizer is released; a deleted
    experiment's run ends there). Read from the object alone, so an operator that restarts
    mid-run says the same."""
    meta = body["metadata"]
    if FINALIZER in (meta.get("finalizers") or []):
        return True
    return previous(body).phase in ACTIVE and not meta.get("deletionTimestamp")


def updated(status: ChaosExperimentStatus, **changes) -> ChaosExperimentStatus:
    """`status` with `changes` (field names), validated like any status the operator builds."""
    return ChaosExperimentStatus.model_validate({**status.model_dump(exclude_none=True), **changes})


def count_of(count: int, what: str = "pods") -> str:
    """`1 pod`, `2 pods`, `1 replacement pod`: counts in status messages read as English."""
    return f"{count} {what[:-1] if count == 1 and what.endswith('s') else what}"


def event(name: str, detail: str, at: str | dt.datetime) -> TimelineEvent:
    """One timeline entry."""
    return TimelineEvent(time=at, event=name, detail=detail[:1024])


def parse_time(stamp: str) -> dt.datetime:
    return dt.datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def iso(value: dt.datetime) -> str:
    """A time as status writes it: UTC, whole seconds, `Z`."""
    return value.astimezone(dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _conditions(phase: str, reason: str, message: str) -> list[Condition]:
    ready = phase in ("DryRun", "Completed", "Scheduled") and reason not in ("RecoveryTimedOut",)
    return [Condition("Ready", ready, reason, message),
            Condition("Progressing", phase in ("Running", "Recovering"), reason, message),
            Condition("Degraded", phase in ("Failed", "Aborted") or reason == "RecoveryTimedOut", reason, message)]


def kept_conditions(status: ChaosExperimentStatus) -> list[Condition]:
    """The conditions as they are, for a write that changes no outcome."""
    return [Condition(c.type, c.status == "True", c.reason, c.message or "") for c in status.conditions or []]


def start(body: dict, spec: ChaosExperimentSpec, pods: list[dict], shard: dict | None,
          chaos_mesh_installed: bool = True, at: str | None = None, refusal: tuple[str, str] | None = None,
          slo_checked: str | None = None, carry: ChaosExperimentStatus | None = None) -> Step:
    """The first step of a new run (new object, new generation, or a scheduled run that is due),
    planned on the target's `pods` (and its `shard`, for a shardRef): the status to write
    first, and the action to take once it is written.

    `refusal` is governance's verdict (namespace, kill switch, SLO already burning) and wins
    over the plan's own (blast radius, no targets); `carry` keeps the schedule's fields and the
    probes' states."""
    at = at or now()
    the_plan = plan(body, spec, pods, shard)
    targets = the_plan.targets
    timeline = [event("Planned", f"{spec.action} on {', '.join(targets) or 'nothing'} "
                                 f"({len(targets)} of {the_plan.matched} matching pods)", at)]

    def finish(phase: str, reason: str, message: str, verdict: str = "Inconclusive", **extra) -> Step:
        status = updated(carry or ChaosExperimentStatus(), planned_targets=targets, started_at=at,
                         timeline=timeline, phase=phase, phase_reason=message, verdict=verdict,
                         completed_at=at if phase in TERMINAL else None, **extra)
        return Step(status, _conditions(phase, reason, message))

    refused = refusal or the_plan.refusal
    if refused:
        reason, message = refused
        timeline.append(event("Aborted", message, at))
        return finish("Aborted", reason, message, abort_reason=message)
    limit = spec.blast_radius
    timeline.append(event("Validated", f"namespace {target_namespace(body, spec)} opted in, kill switch off, "
                                       f"{len(targets)} of {the_plan.matched} pods within the blast radius "
                                       f"({count_of(limit.max_pods)}, {limit.max_percent}%)", at))
    if slo_checked:
        timeline.append(event("SLOChecked", slo_checked, at))
    if spec.dry_run:
        return finish("DryRun", "DryRun", f"dry run: would {spec.action} {', '.join(targets)}; nothing injected")
    if spec.action in CHAOS_MESH and not chaos_mesh_installed:
        message = f"{spec.action} needs Chaos Mesh's {CHAOS_MESH[spec.action]} CRD, which is not installed"
        return finish("Failed", "ChaosMeshNotInstalled", message)
    extra: dict = {}
    if spec.action == "sqlFailover" and failover_mode(spec) == "switchover":
        wanted = (spec.parameters.switchover_to if spec.parameters else None) or switchover_target(shard, targets[0])
        if not wanted or wanted == targets[0]:
            return finish("Failed", "NoSwitchoverTarget",
                          f"no streaming secondary of {spec.target.shard_ref} to switch over to "
                          f"(primary {targets[0]})")
        extra["affected_targets"] = [targets[0], wanted]
    timeline.append(event("Injecting", f"about to {spec.action} {', '.join(targets)}", at))
    step = finish("Running", "Injecting", f"injecting {spec.action} into {count_of(len(targets))}", **extra)
    if spec.action == "sqlFailover":
        step.action = "requestSwitchover" if failover_mode(spec) == "switchover" else "deletePods"
    elif spec.action == "podKill":
        step.action = "deletePods"
    elif spec.action == "containerKill":
        step.action = "killContainers"
    else:
        step.action, step.children = "applyChaosMesh", chaos_mesh_children(body, spec, targets)
        step.status.generated_objects = [
            ObjectRef(api_version=c["apiVersion"], kind=c["kind"], name=c["metadata"]["name"],
                      namespace=c["metadata"]["namespace"]) for c in step.children]
    return step


def abort(status: ChaosExperimentStatus, reason: str, message: str, at: str | None = None,
          phase: str = "Aborted") -> Step:
    """Stop a run where it stands: Aborted (or Failed), verdict Failed; the step then cleans up."""
    at = at or now()
    fields = updated(status, phase=phase, phase_reason=message, verdict="Failed", abort_reason=message,
                     completed_at=at, timeline=[*(status.timeline or []), event("Aborted", message, at)])
    return Step(fields, _conditions(phase, reason, message))


def cleaned(status: ChaosExperimentStatus, detail: str, at: str | None = None) -> Step:
    """Record the cleanup of a finished run (its conditions stay what they were)."""
    timeline = [*(status.timeline or []), event("CleanedUp", detail, at or now())][-TIMELINE_LENGTH:]
    return Step(updated(status, timeline=timeline), kept_conditions(status))


def injected(status: ChaosExperimentStatus, detail: str, at: str | None = None,
             affected: list[str] | None = None) -> Step:
    """After the action (or on finding a Running run after a restart: not repeated)."""
    at = at or now()
    fields = updated(status, phase="Recovering", phase_reason=detail,
                     affected_targets=affected if affected is not None else status.affected_targets or [],
                     timeline=[*(status.timeline or []), event("Injected", detail, at)])
    return Step(fields, _conditions("Recovering", "Injected", detail))


def _injecting_time(status: ChaosExperimentStatus) -> dt.datetime:
    return next((e.time for e in status.timeline or [] if e.event == "Injecting"), status.started_at)


def _ready_since(pod: dict) -> dt.datetime | None:
    """When the pod last became Ready, if it is Ready."""
    for condition in (pod.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "Ready" and condition.get("status") == "True":
            stamp = condition.get("lastTransitionTime")
            return parse_time(stamp) if stamp else None
    return None


def _killed_at(pod: dict) -> dt.datetime | None:
    """When a container of the pod last died (its lastState.terminated.finishedAt)."""
    stamps = [parse_time(s["lastState"]["terminated"]["finishedAt"])
              for s in (pod.get("status") or {}).get("containerStatuses") or []
              if ((s.get("lastState") or {}).get("terminated") or {}).get("finishedAt")]
    return max(stamps) if stamps else None


def _recovered(status: ChaosExperimentStatus, detail: str, seconds: float, at: str,
               name: str = "TargetRecovered") -> Step:
    fields = updated(status, phase="Completed", phase_reason=detail, verdict="Passed",
                     recovery_seconds=round(seconds, 3), completed_at=at,
                     timeline=[*(status.timeline or []), event(name, detail, at)])
    return Step(fields, _conditions("Completed", "Recovered", detail))


def _pod_kill_progress(spec: ChaosExperimentSpec, status: ChaosExperimentStatus, pods: list[dict],
                       since: dt.datetime, at: dt.datetime) -> tuple[float | None, str]:
    """(seconds until every killed pod had a Ready replacement, or None; what we wait for)."""
    planned = status.planned_targets or []
    pool = [p for p in alive(pods) if p["metadata"]["name"] in planned or in_target(spec, p)]
    # a StatefulSet's replacement keeps the name: a pod is new when it was created after the kill
    originals = [p for p in pool if p["metadata"]["name"] in planned and parse_time(p["metadata"]["creationTimestamp"]) < since]
    replacements = [p for p in pool if parse_time(p["metadata"]["creationTimestamp"]) >= since and pod_ready(p)]
    if not originals and len(replacements) >= len(planned):
        ready = [_ready_since(p) or at for p in replacements]  # no transition time: seen Ready now
        return max([0.0, *((r - since).total_seconds() for r in ready)]), ""
    return None, f"waiting for replacements: {len(replacements)}/{len(planned)} Ready"


def _container_kill_progress(status: ChaosExperimentStatus, pods: list[dict],
                             since: dt.datetime) -> tuple[float | None, str]:
    """(seconds until every killed container's pod was Ready again, or None; what we wait for)."""
    by_name = {p["metadata"]["name"]: p for p in pods}
    affected = status.affected_targets or status.planned_targets or []
    times = []
    for name in affected:
        pod = by_name.get(name)
        killed, ready = (_killed_at(pod), _ready_since(pod)) if pod else (None, None)
        if killed is None or killed < since - dt.timedelta(seconds=1) or ready is None or ready < killed:
            return None, f"waiting for {name}: container restarted and Ready again"
        times.append((ready - since).total_seconds())
    return max([0.0, *times]), ""


def failover_record(status: ChaosExperimentStatus, shard: dict | None) -> dict | None:
    """The Shard's record of the failover this run caused: completed, away from the planned
    primary, started after the injection."""
    last = ((shard or {}).get("status") or {}).get("lastFailover") or {}
    old_primary = (status.planned_targets or [None])[0]
    if last.get("completedAt") and last.get("from") == old_primary and \
            parse_time(last["startedAt"]) >= _injecting_time(status) - dt.timedelta(seconds=2):
        return last
    return None


def _failover_progress(status: ChaosExperimentStatus, shard: dict | None, since: dt.datetime,
                       write_at: dt.datetime | None) -> tuple[float | None, str, dict | None]:
    """(seconds until the `-primary` Service took a write, or None; waiting; the Shard's record)."""
    last = failover_record(status, shard)
    if not last:
        old_primary = (status.planned_targets or [None])[0]
        return None, f"waiting for the Shard to fail over away from {old_primary}", None
    if write_at is None:
        return None, f"failed over to {last['to']}; waiting for a write through the -primary Service", last
    return max(0.0, (write_at - since).total_seconds()), "", last


def recover(spec: ChaosExperimentSpec, status: ChaosExperimentStatus, pods: list[dict],
            at: str | None = None, shard: dict | None = None, write_at: dt.datetime | None = None) -> Step:
    """Recovering -> Completed when the target is healthy again, timed from the injection:
    podKill, a Ready replacement for every killed pod; containerKill, each killed container
    restarted and its pod Ready; sqlFailover, the Shard recorded the failover and its
    `-primary` Service accepted a write (`write_at`); Chaos Mesh faults, their duration is
    over. Times out (verdict Failed) after the duration."""
    at = at or now()
    since = _injecting_time(status)
    elapsed = (parse_time(at) - since).total_seconds()
    timeline = list(status.timeline or [])
    if spec.action in CHAOS_MESH:
        if elapsed >= duration_seconds(spec.duration):
            detail = f"fault ended after {spec.duration}"
            fields = updated(status, phase="Completed", phase_reason=detail, verdict="Passed", completed_at=at,
                             timeline=[*timeline, event("Completed", detail, at)])
            return Step(fields, _conditions("Completed", "FaultEnded", detail))
        waiting = f"fault active for {elapsed:.0f}s of {spec.duration}"
        return Step(updated(status, phase_reason=waiting), _conditions("Recovering", "FaultActive", waiting))
    if spec.action == "sqlFailover":
        seconds, waiting, record = _failover_progress(status, shard, since, write_at)
        if record and not any(e.event == "FailoverRecorded" for e in timeline):
            timeline.append(event("FailoverRecorded", f"Shard {spec.target.shard_ref}: {record['from']} -> "
                                  f"{record['to']} ({record.get('reason')}) in {record.get('durationSeconds')}s, "
                                  f"writes out for {record.get('outageSeconds')}s", at))
            status = updated(status, timeline=timeline)
        if seconds is not None:
            return _recovered(status, f"-primary Service of {spec.target.shard_ref} accepted a write "
                              f"on {record['to']} {seconds:.1f}s after the injection", seconds, at)
    elif spec.action == "containerKill":
        seconds, waiting = _container_kill_progress(status, pods, since)
        if seconds is not None:
            return _recovered(status, f"{count_of(len(status.affected_targets or []))} Ready again "
                              f"{seconds:.1f}s after their container was killed", seconds, at)
    else:
        seconds, waiting = _pod_kill_progress(spec, status, pods, since, parse_time(at))
        if seconds is not None:
            return _recovered(status, f"{count_of(len(status.planned_targets or []), 'replacement pods')} Ready "
                              f"{seconds:.0f}s after the kill", seconds, at, name="Recovered")
    if elapsed >= duration_seconds(spec.duration):
        detail = f"not recovered within {spec.duration}: {waiting}"
        fields = updated(status, phase="Completed", phase_reason=detail, verdict="Failed", completed_at=at,
                         timeline=[*timeline, event("RecoveryTimedOut", detail, at)])
        return Step(fields, _conditions("Completed", "RecoveryTimedOut", detail))
    return Step(updated(status, phase_reason=waiting), _conditions("Recovering", "Recovering", waiting))


def is_new_run(body: dict) -> bool:
    """No run yet, or the spec changed since the last one (a new generation is a new run)."""
    status = previous(body)
    return not status.phase or status.observed_generation != body["metadata"].get("generation")


def schedule_fields(status: ChaosExperimentStatus) -> ChaosExperimentStatus:
    """The schedule's fields of a status, which every run of a scheduled experiment carries."""
    return ChaosExperimentStatus(runs=status.runs, last_schedule_time=status.last_schedule_time,
                                 next_run_at=status.next_run_at)


def scheduled(schedule: str, status: ChaosExperimentStatus, next_at: dt.datetime, at: str | None = None) -> Step:
    """A scheduled experiment (new, or changed) waiting for its next run."""
    at = at or now()
    message = f"next run at {iso(next_at)}"
    fields = ChaosExperimentStatus(phase="Scheduled", runs=status.runs or 0, next_run_at=iso(next_at),
                                   phase_reason=message,
                                   timeline=[event("Scheduled", f"{schedule} (UTC): {message}", at)])
    return Step(fields, _conditions("Scheduled", "Scheduled", message))


def skipped(status: ChaosExperimentStatus, next_at: dt.datetime, at: str | None = None) -> Step:
    """concurrencyPolicy Forbid: the due run is skipped while the last one is still active."""
    skip = event("Skipped", f"run due at {iso(status.next_run_at)} skipped: the last run is still active "
                            "(concurrencyPolicy Forbid)", at or now())
    fields = updated(status, next_run_at=iso(next_at), timeline=[*(status.timeline or []), skip][-TIMELINE_LENGTH:])
    return Step(fields, kept_conditions(status))


def next_run_fields(status: ChaosExperimentStatus, next_at: dt.datetime) -> ChaosExperimentStatus:
    """The schedule's fields of a run that starts now."""
    return ChaosExperimentStatus(runs=(status.runs or 0) + 1, last_schedule_time=status.next_run_at,
                                 next_run_at=iso(next_at))


def with_event(step: Step, name: str, detail: str, at: str | None = None) -> Step:
    """`step` with an entry put before its last one (e.g. what the SLOs read, before Aborted)."""
    step.status.timeline.insert(-1, event(name, detail, at or now()))
    return step

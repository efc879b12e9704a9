"""A Drill's run as a state machine kept in its status (pure): from the spec, the status as
stored, what the cluster shows (`Observed`) and the time, the next status and what to do once
it is written (`Step`).

Pending -> Preflight -> Baseline -> Injecting -> Recovering -> Judging -> Passed | Failed, and
Aborted from any running phase (preflight refusal, fast burn, the chaos kill switch, a load or
injection lost, the deadline). The schedule is fixed from the baseline's start T0 (the load's
start plus its ramp-up): injection i fires at T0 + baseline + after_i, recovery ends at
T0 + baseline + the last offset + recover, and that range is the drill's window.

Restart safety: every transition is in status before anything is acted on. An injection is
recorded (name, firedAt) before its ChaosExperiment is created, and one recorded earlier whose
experiment is missing is marked Missing, never created again. A second drill on the same Lab
waits in Pending (WaitingForDrill) until the first ends; the older one goes first.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from pimlab_operator.chaos.status import TERMINAL as EXPERIMENT_ENDED
from pimlab_operator.chaos.status import parse_time
from pimlab_operator.conditions import Condition
from pimlab_operator.drill import judge
from pimlab_operator.drill.desired import experiment_name, load_name
from pimlab_operator.drill.model import (
    DrillSpec,
    DrillStatus,
    DrillWindow,
    FailoverSeen,
    InjectionRecord,
    JourneyLatency,
    LedgerFigures,
    LoadRef,
    RecoveryFigures,
    ShardOutage,
    TimelineEntry,
)
from pimlab_operator.schema import duration_seconds

RUNNING = ("Preflight", "Baseline", "Injecting", "Recovering", "Judging")
TERMINAL = ("Passed", "Failed", "Aborted")
#: The timeline's cap (the CRD's maxItems): the drill's own entries are always kept.
TIMELINE_LENGTH = 200
LOAD_ENDED = ("Succeeded", "Failed")


@dataclass
class Observed:
    """What the step read for one reconcile."""

    lab: dict | None = None
    other_drills: list[dict] = field(default_factory=list)  # Drills on the same Lab, this one excluded
    kill_switch: str | None = None  # the kill switch's message when engaged
    readings: dict[str, dict | str] = field(default_factory=dict)  # live budgets (`judge.watched_slos`)
    load: dict | None = None
    experiments: dict[str, dict] = field(default_factory=dict)  # the Drill's ChaosExperiments by name
    shards: list[dict] = field(default_factory=list)  # the Lab's Shards
    evidence: Evidence | None = None  # gathered in Judging once the load ended (`ready_to_judge`)


@dataclass
class Evidence:
    """What the verdict reads beyond status: the SLOs over the window, the compareTo drill."""

    slos: list[judge.SloReading] = field(default_factory=list)
    last_passed: dict | None = None


@dataclass
class Step:
    """What the handler writes first, then does."""

    status: DrillStatus
    conditions: list[Condition]
    events: list[tuple[str, str, str]] = field(default_factory=list)  # (type, reason, message)
    create_load: bool = False
    inject: list[str] = field(default_factory=list)  # inject steps whose experiments to create now
    stop: bool = False  # end the load and every injection still in flight
    finalizer: bool | None = None  # True: hold it (set before the write); False: release it


def previous(body: dict) -> DrillStatus:
    return DrillStatus.model_validate(body.get("status") or {})


def _when(stamp: str | dt.datetime | None) -> dt.datetime | None:
    return stamp if stamp is None or isinstance(stamp, dt.datetime) else parse_time(stamp)


def _iso(at: dt.datetime) -> str:
    return at.astimezone(dt.timezone.utc).isoformat().replace("+00:00", "Z")


def _conditions(phase: str, reason: str, message: str) -> list[Condition]:
    """Ready (Passed), Failed (Failed or Aborted, with the reason) and Progressing: what Flux's
    and Argo CD's health checks read."""
    return [Condition("Ready", phase == "Passed", reason if phase in TERMINAL else "InProgress", message),
            Condition("Failed", phase in ("Failed", "Aborted"), reason if phase in ("Failed", "Aborted") else "NotFailed",
                      message),
            Condition("Progressing", phase in RUNNING, reason, message)]


def _entry(at: dt.datetime, event: str, detail: str, source: str = "Drill") -> TimelineEntry:
    return TimelineEntry(time=at, source=source, event=event, detail=detail[:1024])


def _updated(status: DrillStatus, **changes) -> DrillStatus:
    return DrillStatus.model_validate({**status.model_dump(exclude_none=True), **changes})


def _move(status: DrillStatus, phase: str, reason: str, message: str, now: dt.datetime, record: bool = False,
          **changes) -> Step:
    """A transition, a new reason within a phase, or (`record`) a step worth its own entry:
    status, timeline entry, conditions, an Event."""
    moved = record or phase != status.phase or reason != status.reason
    timeline = [*(status.timeline or []), *([_entry(now, phase if phase != status.phase else reason, message)]
                                              if moved else [])]
    new = _updated(status, phase=phase, reason=reason, message=message[:1024], phase_reason=message[:1024],
                   timeline=timeline, **changes)
    warning = phase in ("Failed", "Aborted")
    events = [("Warning" if warning else "Normal", phase if phase != status.phase else reason, message)] if moved else []
    return Step(new, _conditions(phase, reason, message), events)


def _abort(status: DrillStatus, reason: str, message: str, now: dt.datetime) -> Step:
    step = _move(status, "Aborted", reason, message, now, verdict="Aborted", score=0, finished_at=now)
    step.stop = True
    return step


def real_injection(spec: DrillSpec) -> bool:
    """Whether any injection is more than a dry run (the kill switch stops those)."""
    return any(not i.experiment.dry_run for i in spec.injections())


def _load_active(load: dict | None) -> bool:
    return load is not None and (load.get("status") or {}).get("phase") not in LOAD_ENDED


def _experiment_active(experiment: dict) -> bool:
    return (experiment.get("status") or {}).get("phase") not in EXPERIMENT_ENDED


def children_active(seen: Observed) -> bool:
    """Whether the load still runs or an injection is still in flight."""
    return _load_active(seen.load) or any(_experiment_active(e) for e in seen.experiments.values())


def ready_to_judge(status: DrillStatus, load: dict | None) -> bool:
    """In Judging once the load has ended (it reads its ledger back as it ends) or is gone."""
    return status.phase == "Judging" and not _load_active(load)


# ---- what the children say -------------------------------------------------------------------


def _in_window(at: dt.datetime | None, window: DrillWindow | None, now: dt.datetime) -> bool:
    return bool(at and window and window.start and window.start <= at <= (window.end or now))


def _failovers(shards: list[dict], window: DrillWindow | None, now: dt.datetime) -> list[FailoverSeen]:
    found = {}
    for shard in shards:
        shard_status = shard.get("status") or {}
        for record in [*(shard_status.get("failoverHistory") or []), shard_status.get("lastFailover") or {}]:
            started = _when(record.get("startedAt"))
            if not _in_window(started, window, now):
                continue
            found[(shard["metadata"]["name"], started)] = FailoverSeen(
                shard=shard["metadata"]["name"], from_=record.get("from", "?"), to=record.get("to", "?"),
                reason=record.get("reason", "?"), duration_seconds=record.get("durationSeconds"), at=started)
    return [found[key] for key in sorted(found)][-32:]


def _child_timeline(status: DrillStatus, seen: Observed, now: dt.datetime) -> list[TimelineEntry]:
    entries = []
    for name, experiment in seen.experiments.items():
        for item in (experiment.get("status") or {}).get("timeline") or []:
            entries.append(_entry(_when(item["time"]), item["event"], item.get("detail") or "", f"ChaosExperiment/{name}"))
    for failover in status.failovers or []:
        entries.append(_entry(failover.at, "Failover", f"{failover.from_} -> {failover.to} ({failover.reason}"
                              + (f", {failover.duration_seconds:g} s)" if failover.duration_seconds is not None else ")"),
                              f"Shard/{failover.shard}"))
    load = seen.load
    if load:
        load_status, source = load.get("status") or {}, f"PersonaLoad/{load['metadata']['name']}"
        if load_status.get("startedAt"):
            entries.append(_entry(_when(load_status["startedAt"]), "Started", f"job {load_status.get('jobName', '?')}", source))
        if load_status.get("completedAt") and load_status.get("phase") in LOAD_ENDED:
            entries.append(_entry(_when(load_status["completedAt"]), load_status["phase"],
                                  load_status.get("phaseReason") or "", source))
    return entries


def _merged_timeline(own: list[TimelineEntry], children: list[TimelineEntry]) -> list[TimelineEntry]:
    """Every entry once, oldest first; over the cap, the drill's own entries and the newest of
    the children's are kept."""
    unique = {(e.time, e.source, e.event, e.detail): e for e in [*own, *children]}
    ordered = [unique[key] for key in sorted(unique, key=lambda k: (k[0], k[1] != "Drill"))]
    if len(ordered) <= TIMELINE_LENGTH:
        return ordered
    mine = [e for e in ordered if e.source == "Drill"]
    theirs = [e for e in ordered if e.source != "Drill"][-(TIMELINE_LENGTH - len(mine)):]
    return sorted([*mine, *theirs], key=lambda e: (e.time, e.source != "Drill"))


def _load_facts(load: dict | None, window: DrillWindow | None, now: dt.datetime) -> dict:
    """ledger, recovery and latency, copied from the PersonaLoad's status."""
    load_status = (load or {}).get("status") or {}
    facts: dict = {}
    ledger = load_status.get("ledger")
    if ledger:
        chains = ledger.get("auditChains") or []
        facts["ledger"] = LedgerFigures(
            acknowledged=ledger.get("acknowledged"), verified=ledger.get("verified"), lost=ledger.get("lost"),
            lost_sample=(ledger.get("lostSample") or [])[:10], unverifiable=ledger.get("unverifiable"),
            audit_chains_checked=len(chains),
            broken_audit_chains=[f"{c.get('shard')}: {c.get('message') or 'does not verify'}"[:300]
                                 for c in chains if not c.get("ok")][:16])
        longest: dict[str, ShardOutage] = {}
        for outage in load_status.get("writeOutages") or []:
            start = _when(outage.get("start"))
            if window and window.start and start and not _in_window(start, window, now):
                continue
            seen = ShardOutage(shard=outage["shard"], outage_seconds=outage.get("seconds") or 0.0, start=start,
                               end=_when(outage.get("end")))
            if outage["shard"] not in longest or seen.outage_seconds > longest[outage["shard"]].outage_seconds:
                longest[outage["shard"]] = seen
        shards = [longest[name] for name in sorted(longest)]
        facts["recovery"] = RecoveryFigures(seconds=max((s.outage_seconds for s in shards), default=0.0), shards=shards)
    journeys = ((load_status.get("summary") or {}).get("byJourney") or {})
    if journeys:
        facts["latency"] = [JourneyLatency(journey=name, **{p: (figures.get("latencyMs") or {}).get(p)
                                                            for p in ("p50", "p95", "p99")})
                            for name, figures in sorted(journeys.items())]
    return facts


def _refreshed(status: DrillStatus, seen: Observed, now: dt.datetime) -> DrillStatus:
    """Status with what the children say now: the injections' targets and ends, failovers,
    ledger, recovery, latency and the merged timeline."""
    records = []
    for record in status.injections or []:
        experiment = seen.experiments.get(record.experiment)
        if record.ended_at is None and experiment is not None:
            exp_status = experiment.get("status") or {}
            targets = exp_status.get("affectedTargets") or exp_status.get("plannedTargets")
            if targets:
                record = record.model_copy(update={"targets": targets[:100]})
            if exp_status.get("phase") in EXPERIMENT_ENDED:
                record = record.model_copy(update={"ended_at": _when(exp_status.get("completedAt")) or now,
                                                   "outcome": exp_status["phase"]})
        records.append(record)
    status = _updated(status, injections=records or None, **_load_facts(seen.load, status.window, now))
    status = _updated(status, failovers=_failovers(seen.shards, status.window, now) or None)
    return _updated(status, timeline=_merged_timeline(status.timeline or [], _child_timeline(status, seen, now)))


def _missing_injections(status: DrillStatus, seen: Observed, now: dt.datetime) -> tuple[DrillStatus, list[str]]:
    """Injections recorded by an earlier reconcile whose experiment is gone (the operator
    stopped between the record and the create, or someone deleted it): marked Missing and
    never created again."""
    records, missing = [], []
    for record in status.injections or []:
        if record.ended_at is None and record.experiment not in seen.experiments:
            record = record.model_copy(update={"ended_at": now, "outcome": "Missing"})
            missing.append(record.name)
        records.append(record)
    timeline = [*(status.timeline or []), *(_entry(now, "NotInjected", f"{name}: its ChaosExperiment is missing "
                                                   "(never created or deleted); not injected again") for name in missing)]
    return _updated(status, injections=records or None, timeline=timeline), missing


# ---- the phases ------------------------------------------------------------------------------


def _pending(name: str, created: str, spec: DrillSpec, status: DrillStatus, seen: Observed,
             now: dt.datetime) -> Step:
    if seen.lab is None:
        return _move(status, "Pending", "LabNotFound", f"Lab {spec.lab_ref} does not exist in this namespace", now)
    mine = (created or "", name)
    for other in sorted(seen.other_drills, key=lambda d: (d["metadata"].get("creationTimestamp") or "", d["metadata"]["name"])):
        phase = (other.get("status") or {}).get("phase") or "Pending"
        theirs = (other["metadata"].get("creationTimestamp") or "", other["metadata"]["name"])
        if phase in RUNNING or (phase == "Pending" and theirs < mine):
            return _move(status, "Pending", "WaitingForDrill",
                         f"waiting for Drill {other['metadata']['name']} ({phase}) on Lab {spec.lab_ref}: "
                         "drills on one Lab never interleave", now)
    step = _move(status, "Preflight", "Preflight", f"checking the SLOs before starting on Lab {spec.lab_ref}", now,
                 started_at=now, deadline=now + dt.timedelta(seconds=duration_seconds(spec.timeout)))
    step.finalizer = True
    return step


def _preflight(name: str, spec: DrillSpec, status: DrillStatus, seen: Observed, now: dt.datetime) -> Step:
    refusal = judge.preflight_refusal(spec, seen.readings)
    if refusal:
        return _abort(status, refusal[0], f"refused, nothing started: {refusal[1]}", now)
    checked = ", ".join(f"{n} budget left {r.get('remaining', 'n/a')}" for n, r in sorted(seen.readings.items())
                        if isinstance(r, dict)) or "no SLO to check"
    step = _move(status, "Baseline", "LoadStarting",
                 f"preflight passed ({checked}); load {load_name(name)} started, baseline "
                 f"{spec.baseline_seconds():g} s once it runs", now, load=LoadRef(name=load_name(name)))
    step.create_load = True
    return step


def _load_trouble(spec: DrillSpec, status: DrillStatus, seen: Observed, now: dt.datetime) -> tuple[str, str] | None:
    """Why the run cannot go on without its load: gone, or ended before the drill did."""
    if seen.load is None:
        return "LoadMissing", f"PersonaLoad {status.load.name if status.load else '?'} is gone: the drill cannot go on"
    load_status = seen.load.get("status") or {}
    if load_status.get("phase") in LOAD_ENDED and status.phase != "Judging":
        return "LoadEnded", (f"the load ended {load_status['phase']} before the drill did: "
                             f"{load_status.get('phaseReason') or 'no reason given'}")
    return None


def _due(spec: DrillSpec, status: DrillStatus, name: str, now: dt.datetime) -> list[InjectionRecord]:
    """Injections whose time has come and that are not recorded yet."""
    fired = {r.name for r in status.injections or []}
    end_of_baseline = status.window.start + dt.timedelta(seconds=spec.baseline_seconds())
    due = []
    for injection in spec.injections():
        offset = duration_seconds(injection.after)
        if injection.name not in fired and now >= end_of_baseline + dt.timedelta(seconds=offset):
            due.append(InjectionRecord(name=injection.name, experiment=experiment_name(name, injection.name),
                                       offset_seconds=offset, fired_at=now, action=injection.experiment.action))
    return due


def _baseline(name: str, spec: DrillSpec, status: DrillStatus, seen: Observed, now: dt.datetime) -> Step:
    window = status.window
    if window is None or window.start is None:
        if seen.load is None:  # recorded, not created yet (a restart in between): create it
            step = _move(status, "Baseline", "LoadStarting", f"creating load {load_name(name)}", now)
            step.create_load = True
            return step
        trouble = _load_trouble(spec, status, seen, now)
        if trouble:
            return _abort(status, *trouble, now)
        load_status = seen.load.get("status") or {}
        started = _when(load_status.get("startedAt"))
        if load_status.get("phase") != "Running" or started is None:
            return _move(status, "Baseline", "WaitingForLoad",
                         f"waiting for load {load_name(name)} to run ({load_status.get('phase') or 'no phase yet'})", now)
        ramp_up = duration_seconds(spec.load.profile.ramp_up) if spec.load.profile.ramp_up else 0.0
        start = started + dt.timedelta(seconds=ramp_up)
        status = _updated(status, window=DrillWindow(start=start))
        return _move(status, "Baseline", "BaselineRunning",
                     f"baseline of {spec.baseline_seconds():g} s from {_iso(start)} (the load's start"
                     f"{f' + {ramp_up:g} s ramp-up' if ramp_up else ''})", now)
    trouble = _load_trouble(spec, status, seen, now)
    if trouble:
        return _abort(status, *trouble, now)
    if now < window.start + dt.timedelta(seconds=spec.baseline_seconds()):
        return _move(status, "Baseline", status.reason or "BaselineRunning", status.message or "", now)
    entering = _move(status, "Injecting", "Injecting", "baseline done", now)
    step = _injecting(name, spec, entering.status, seen, now)
    step.events = [*entering.events, *step.events]
    return step


def _injecting(name: str, spec: DrillSpec, status: DrillStatus, seen: Observed, now: dt.datetime) -> Step:
    trouble = _load_trouble(spec, status, seen, now)
    if trouble:
        return _abort(status, *trouble, now)
    status, _ = _missing_injections(status, seen, now)
    refused = next((r for r in status.injections or [] if r.outcome in ("Aborted", "Failed") and not r.targets), None)
    if refused:
        experiment = seen.experiments.get(refused.experiment) or {}
        why = (experiment.get("status") or {}).get("abortReason") or (experiment.get("status") or {}).get("phaseReason")
        return _abort(status, "InjectionRefused", f"injection {refused.name} ended {refused.outcome} without hitting "
                      f"anything: {why or 'no reason given'}", now)
    due = _due(spec, status, name, now)
    if due:
        status = _updated(status, injections=[*(status.injections or []), *due])
        what = "; ".join(f"{r.name}: {r.action} ({r.experiment})" for r in due)
        step = _move(status, "Injecting", "Injected", f"fired {what}", now, record=True)
        step.inject = [r.name for r in due]
        return step
    if len(status.injections or []) == len(spec.injections()):
        last = max(r.offset_seconds for r in status.injections)
        until = status.window.start + dt.timedelta(seconds=spec.baseline_seconds() + last + spec.recover_seconds())
        return _move(status, "Recovering", "Recovering",
                     f"every injection fired; observing recovery until {_iso(until)}", now)
    return _move(status, "Injecting", status.reason or "Injecting", status.message or "", now)


def _recovering(spec: DrillSpec, status: DrillStatus, seen: Observed, now: dt.datetime) -> Step:
    """Until the planned end, which closes the window exactly there (the load, sized to the same
    schedule, may end as the window does)."""
    end = status.window.start + dt.timedelta(seconds=spec.planned_seconds())
    status, _ = _missing_injections(status, seen, now)
    if now >= end:
        status = _updated(status, window=DrillWindow(start=status.window.start, end=end))
        return _move(status, "Judging", "WaitingForLoad",
                     "recovery observed; waiting for the load to end and read its ledger back", now)
    trouble = _load_trouble(spec, status, seen, now)
    if trouble:
        return _abort(status, *trouble, now)
    return _move(status, "Recovering", "Recovering", status.message or "", now)


def _judging(name: str, spec: DrillSpec, status: DrillStatus, seen: Observed, now: dt.datetime) -> Step:
    if not ready_to_judge(status, seen.load) or seen.evidence is None:
        return _move(status, "Judging", "WaitingForLoad", status.message or "", now)
    earlier = seen.evidence.last_passed
    results, budgets = judge.hypotheses(spec, status, seen.evidence.slos,
                                        previous(earlier) if earlier else None,
                                        earlier["metadata"]["name"] if earlier else "")
    outcome, score = judge.verdict(spec, results)
    missed = [r for r in results if not r.met]
    message = (f"all {len(results)} hypotheses held" if not missed else
               "; ".join(f"{r.name}: observed {'nothing' if r.observed is None else f'{r.observed:g}'}, "
                         f"limit {r.limit:g}" for r in missed))
    if spec.compare_to and not earlier:
        message += f"; compareTo: no earlier Passed drill named {name.rsplit('-', 1)[0]}-*"
    status = _updated(status, hypotheses=results, budgets=budgets or None, verdict=outcome, score=score,
                      finished_at=now)
    step = _move(status, outcome, "HypothesesHeld" if outcome == "Passed" else "HypothesisFailed",
                 f"score {score}: {message}", now)
    step.finalizer = False
    return step


def advance(name: str, created: str, spec: DrillSpec, status: DrillStatus, seen: Observed, now: dt.datetime) -> Step:
    """The next step of the drill `name` (created at `created`)."""
    phase = status.phase or "Pending"
    if phase in TERMINAL:
        step = Step(status, _conditions(phase, status.reason or phase, status.message or ""))
        if phase == "Aborted" and children_active(seen):
            step.stop = True  # an abort ends the load and every injection before letting go
        else:
            step.finalizer = False
        return step
    if phase == "Pending":
        return _pending(name, created, spec, status, seen, now)
    step = _running(name, spec, _refreshed(status, seen, now), seen, now)
    if step.status.phase == "Aborted" and not children_active(seen):
        step.finalizer = False  # nothing to stop: let go at once
    return step


def _running(name: str, spec: DrillSpec, status: DrillStatus, seen: Observed, now: dt.datetime) -> Step:
    phase = status.phase
    if status.deadline and now >= status.deadline:
        return _abort(status, "DeadlineExceeded", f"the drill passed its deadline {_iso(status.deadline)} "
                      f"(spec.timeout {spec.timeout}) in phase {phase}", now)
    if seen.kill_switch and real_injection(spec) and phase != "Judging":
        return _abort(status, "KillSwitchEngaged", seen.kill_switch, now)
    if phase in ("Baseline", "Injecting", "Recovering"):
        breach = judge.fast_burn_breach(spec, seen.readings)
        if breach:
            return _abort(status, breach[0], f"fast burn: {breach[1]}", now)
    if phase == "Preflight":
        return _preflight(name, spec, status, seen, now)
    if phase == "Baseline":
        return _baseline(name, spec, status, seen, now)
    if phase == "Injecting":
        return _injecting(name, spec, status, seen, now)
    if phase == "Recovering":
        return _recovering(spec, status, seen, now)
    return _judging(name, spec, status, seen, now)

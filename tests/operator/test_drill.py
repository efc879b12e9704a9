"""The Drill's state machine (pure): each transition, what is written before anything is done,
waiting for another drill, the deadline, the kill switch and fast-burn aborts, and a restart
that never injects twice. Times are fixed; the cluster's objects are dicts as the apiserver
returns them."""

from __future__ import annotations

import copy
from typing import get_args
import datetime as dt

import yaml

from cr_samples import ROOT
from pimlab_operator.chaos.desired import plan
from pimlab_operator.drill import desired, status
from pimlab_operator import metrics
from pimlab_operator.drill.model import Drill, DrillSpec, DrillStatus, Phase
from pimlab_operator.drill.status import Evidence, Observed, advance

T0 = dt.datetime(2026, 12, 8, 1, 0, 0, tzinfo=dt.timezone.utc)
NAME = "primary-loss"
LAB = {"metadata": {"name": "pim"}, "spec": {}}


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def stamp(seconds: float) -> str:
    return at(seconds).isoformat().replace("+00:00", "Z")


def spec(**changes) -> DrillSpec:
    """baseline 60 s, kill-primary at +0 s, kill-standby at +30 s, recover 90 s: planned 180 s."""
    base = {
        "labRef": "pim",
        "load": {"target": {"labRef": "pim"}, "personas": [{"name": "patient", "weight": 1}],
                 "profile": {"rate": 5, "rampUp": "10s"}},
        "steps": [
            {"baseline": {"duration": "60s"}},
            {"inject": {"name": "kill-primary", "after": "0s", "experiment": {
                "action": "podKill", "target": {"shardRef": "shard-00"}, "dryRun": False, "reference": "ADR-012"}}},
            {"inject": {"name": "kill-standby", "after": "30s", "experiment": {
                "action": "podKill", "target": {"shardRef": "shard-01"}, "dryRun": False, "reference": "ADR-012"}}},
            {"recover": {"duration": "90s"}},
        ],
        "timeout": "10m",
    }
    return DrillSpec.model_validate({**base, **changes})


def load(phase: str | None, started: float | None = None, **extra) -> dict:
    body = {"metadata": {"name": f"{NAME}-load"}, "status": {**({"phase": phase} if phase else {}), **extra}}
    if started is not None:
        body["status"]["startedAt"] = stamp(started)
    return body


def experiment(step: str, phase: str, targets: list[str] | None = None, timeline: list[dict] | None = None) -> dict:
    return {"metadata": {"name": f"{NAME}-{step}"},
            "status": {"phase": phase, **({"affectedTargets": targets} if targets else {}),
                       **({"timeline": timeline} if timeline else {})}}


def drill(name: str, phase: str | None, created: str, lab: str = "pim") -> dict:
    return {"metadata": {"name": name, "creationTimestamp": created}, "spec": {"labRef": lab},
            "status": {"phase": phase} if phase else {}}


def run(current: DrillStatus, seen: Observed, seconds: float, the_spec: DrillSpec | None = None) -> status.Step:
    return advance(NAME, stamp(-3600), the_spec or spec(), current, seen, at(seconds))


def started() -> DrillStatus:
    """Through Pending and Preflight: the load is recorded, the baseline not yet started."""
    first = run(DrillStatus(), Observed(lab=LAB), 0)
    return run(first.status, Observed(lab=LAB), 1).status


def in_baseline() -> DrillStatus:
    """The load runs since T0 + 5 s; with its 10 s ramp-up the baseline starts at T0 + 15 s."""
    return run(started(), Observed(lab=LAB, load=load("Running", 5)), 6).status


# ---- Pending ---------------------------------------------------------------------------------


def test_a_new_drill_goes_to_preflight_and_holds_its_finalizer_before_anything_starts():
    step = run(DrillStatus(), Observed(lab=LAB), 0)
    assert step.status.phase == "Preflight" and step.finalizer is True
    assert step.status.started_at == T0 and step.status.deadline == at(600)
    assert not step.create_load and not step.inject
    assert step.events[0][:2] == ("Normal", "Preflight")
    assert step.status.timeline[-1].source == "Drill" and step.status.timeline[-1].event == "Preflight"


def test_a_drill_waits_for_its_lab():
    step = run(DrillStatus(), Observed(lab=None), 0)
    assert (step.status.phase, step.status.reason) == ("Pending", "LabNotFound")
    assert {c.type: c.status for c in step.conditions} == {"Ready": False, "Failed": False, "Progressing": False}


def test_a_second_drill_on_one_lab_waits_naming_the_first_and_never_interleaves():
    for other in (drill("earlier", "Injecting", stamp(-7200)), drill("older", None, stamp(-7200))):
        step = run(DrillStatus(), Observed(lab=LAB, other_drills=[other]), 0)
        assert (step.status.phase, step.status.reason) == ("Pending", "WaitingForDrill")
        assert f"Drill {other['metadata']['name']}" in step.status.message and step.finalizer is None
    # A younger one waiting, or a finished one, does not hold this drill back.
    for other in (drill("younger", "Pending", stamp(0)), drill("done", "Passed", stamp(-7200))):
        assert run(DrillStatus(), Observed(lab=LAB, other_drills=[other]), 0).status.phase == "Preflight"


# ---- Preflight -------------------------------------------------------------------------------


def budget(remaining: float = 0.9, burn: float = 0.5, pages: tuple[str, ...] = ()) -> dict:
    return {"remaining": remaining, "worstBurnRate": burn, "worstBurnWindow": "5m",
            "firingAlerts": [{"alert": a, "severity": "page"} for a in pages]}


def with_slo(**abort) -> DrillSpec:
    return spec(hypotheses={"slos": [{"name": "booking", "maxBudgetBurn": 0.05}]}, abort=abort)


def test_preflight_records_the_load_before_creating_it():
    first = run(DrillStatus(), Observed(lab=LAB), 0)
    step = run(first.status, Observed(lab=LAB), 1)
    assert (step.status.phase, step.status.reason) == ("Baseline", "LoadStarting")
    assert step.status.load.name == desired.load_name(NAME) and step.create_load and not step.inject


def test_preflight_refuses_an_unreadable_slo_a_spent_budget_or_a_page():
    the_spec = with_slo(preflight={"minBudgetRemaining": 0.2})
    first = run(DrillStatus(), Observed(lab=LAB), 0, the_spec)
    cases = {"SLOUnreadable": {"booking": "no such SLO"},
             "SLOBudgetExhausted": {"booking": budget(remaining=0.1)},
             "PageFiring": {"booking": budget(pages=("SLOErrorBudgetBurnPage",))}}
    for reason, readings in cases.items():
        step = run(first.status, Observed(lab=LAB, readings=readings), 1, the_spec)
        assert (step.status.phase, step.status.reason, step.status.verdict) == ("Aborted", reason, "Aborted")
        assert not step.create_load and step.finalizer is False  # nothing started: let go at once
        assert "refused, nothing started: preflight" in step.status.message
        failed = next(c for c in step.conditions if c.type == "Failed")
        assert failed.status and failed.reason == reason
    passed = run(first.status, Observed(lab=LAB, readings={"booking": budget()}), 1, the_spec)
    assert passed.status.phase == "Baseline" and "booking budget left 0.9" in passed.status.message


# ---- Baseline, injections, recovery ----------------------------------------------------------


def test_the_baseline_starts_when_the_load_runs_after_its_ramp_up():
    waiting = run(started(), Observed(lab=LAB, load=load("Pending")), 3)
    assert (waiting.status.phase, waiting.status.reason) == ("Baseline", "WaitingForLoad")
    assert waiting.status.window is None
    running = in_baseline()
    assert running.window.start == at(15) and running.reason == "BaselineRunning"


def test_a_load_recorded_but_never_created_is_created_again_before_the_baseline():
    step = run(started(), Observed(lab=LAB, load=None), 3)
    assert step.create_load and step.status.phase == "Baseline"


def test_injections_fire_at_their_offsets_recorded_before_their_experiments_exist():
    seen = Observed(lab=LAB, load=load("Running", 5))
    assert run(in_baseline(), seen, 74).status.phase == "Baseline"
    fired = run(in_baseline(), seen, 75)  # 15 s + 60 s baseline + 0 s
    assert fired.status.phase == "Injecting" and fired.inject == ["kill-primary"]
    record = fired.status.injections[0]
    assert (record.name, record.experiment, record.fired_at, record.action) == \
        ("kill-primary", f"{NAME}-kill-primary", at(75), "podKill")
    assert [e[1] for e in fired.events] == ["Injecting", "Injected"]
    seen.experiments = {f"{NAME}-kill-primary": experiment("kill-primary", "Recovering", ["shard-00-0"])}
    waiting = run(fired.status, seen, 90)
    assert waiting.inject == [] and waiting.status.injections[0].targets == ["shard-00-0"]
    second = run(waiting.status, seen, 105)
    assert second.inject == ["kill-standby"] and [r.name for r in second.status.injections] == \
        ["kill-primary", "kill-standby"]


def test_a_restart_never_injects_twice():
    seen = Observed(lab=LAB, load=load("Running", 5))
    fired = run(in_baseline(), seen, 75)
    # The operator stopped after writing the record and before creating the experiment: on
    # resume the record is there, the experiment is not. It is marked Missing, not created.
    resumed = run(fired.status, seen, 80)
    assert resumed.inject == []
    record = resumed.status.injections[0]
    assert record.outcome == "Missing" and record.ended_at == at(80)
    assert any(e.event == "NotInjected" for e in resumed.status.timeline)
    # Every later reconcile leaves it so, and the next injection still fires once.
    again = run(resumed.status, seen, 105)
    assert again.inject == ["kill-standby"]
    assert run(again.status, seen, 106).inject == []


def test_an_injection_refused_by_chaos_governance_aborts_the_drill():
    seen = Observed(lab=LAB, load=load("Running", 5))
    fired = run(in_baseline(), seen, 75)
    seen.experiments = {f"{NAME}-kill-primary": {
        "metadata": {"name": f"{NAME}-kill-primary"},
        "status": {"phase": "Aborted", "abortReason": "namespace lab has not opted in to chaos"}}}
    step = run(fired.status, seen, 77)
    assert (step.status.phase, step.status.reason) == ("Aborted", "InjectionRefused")
    assert "not opted in" in step.status.message and step.stop


def test_recovery_then_judging_over_the_drills_own_window():
    seen = Observed(lab=LAB, load=load("Running", 5), experiments={
        f"{NAME}-kill-primary": experiment("kill-primary", "Completed", ["shard-00-0"]),
        f"{NAME}-kill-standby": experiment("kill-standby", "Completed", ["shard-01-1"])})
    current = run(in_baseline(), Observed(lab=LAB, load=load("Running", 5)), 75).status
    current = run(current, Observed(lab=LAB, load=load("Running", 5)), 105).status
    recovering = run(current, seen, 106)
    assert recovering.status.phase == "Recovering" and "until 2026-12-08T01:03:15Z" in recovering.status.message
    assert run(recovering.status, seen, 194).status.phase == "Recovering"
    early = run(recovering.status, Observed(lab=LAB, load=load("Failed", 5), experiments=seen.experiments), 150)
    assert (early.status.phase, early.status.reason) == ("Aborted", "LoadEnded")
    # Reconciled 2 s after the planned end (15 + 60 + 30 + 90), with the load just ended: the
    # window closes at the planned end, and a load ending with it is no abort.
    seen.load = load("Succeeded", 5, completedAt=stamp(196))
    judging = run(recovering.status, seen, 197)
    assert (judging.status.phase, judging.status.reason) == ("Judging", "WaitingForLoad")
    assert (judging.status.window.start, judging.status.window.end) == (at(15), at(195))
    seen.load = load("Running", 5)
    # It waits for the load to end (the engine reads its ledger back) and for the evidence.
    assert run(judging.status, seen, 200).status.phase == "Judging"
    ledger = {"acknowledged": 900, "verified": 900, "lost": 0, "lostSample": []}
    outages = [{"shard": "shard-00", "start": stamp(76), "end": stamp(84), "seconds": 8.0, "failedWrites": 3},
               {"shard": "shard-01", "start": stamp(106), "end": stamp(110), "seconds": 4.0, "failedWrites": 1}]
    summary = {"byJourney": {"bookEncounter": {"latencyMs": {"p50": 40, "p95": 180, "p99": 400}}}}
    seen.load = load("Succeeded", 5, ledger=ledger, writeOutages=outages, summary=summary,
                     completedAt=stamp(205))
    seen.evidence = Evidence()
    the_spec = spec(hypotheses={"maxRecoverySeconds": 15, "latency": [{"journey": "bookEncounter", "p95Ms": 300}]})
    done = run(judging.status, seen, 206, the_spec)
    assert (done.status.phase, done.status.verdict, done.status.score) == ("Passed", "Passed", 100)
    assert done.finalizer is False and done.status.finished_at == at(206)
    assert done.status.recovery.seconds == 8.0 and [s.shard for s in done.status.recovery.shards] == ["shard-00", "shard-01"]
    assert done.status.ledger.acknowledged == 900 and done.status.latency[0].p95 == 180
    assert {h.name: h.met for h in done.status.hypotheses} == {
        "maxRecoverySeconds": True, "maxLostWrites": True, "latency/bookEncounter/p95": True}
    ready = next(c for c in done.conditions if c.type == "Ready")
    assert ready.status and ready.reason == "HypothesesHeld"


def test_a_load_that_ends_before_the_drill_aborts_it():
    step = run(in_baseline(), Observed(lab=LAB, load=load("Failed", 5, phaseReason="engine crashed")), 30)
    assert (step.status.phase, step.status.reason) == ("Aborted", "LoadEnded") and "engine crashed" in step.status.message


# ---- aborts ----------------------------------------------------------------------------------


def test_the_deadline_aborts_a_stuck_drill_and_stops_its_children():
    seen = Observed(lab=LAB, load=load("Pending"))
    stuck = run(started(), seen, 3).status
    assert run(stuck, seen, 599).status.phase == "Baseline"
    step = run(stuck, seen, 600)
    assert (step.status.phase, step.status.reason, step.status.score) == ("Aborted", "DeadlineExceeded", 0)
    assert step.stop and step.finalizer is None  # let go only once the load is gone
    assert step.events[-1][:2] == ("Warning", "Aborted")


def test_the_kill_switch_aborts_a_drill_with_a_real_injection_but_not_a_dry_one():
    paused = "the chaos kill switch is engaged"
    seen = Observed(lab=LAB, load=load("Running", 5), kill_switch=paused)
    step = run(in_baseline(), seen, 30)
    assert (step.status.phase, step.status.reason, step.status.message) == ("Aborted", "KillSwitchEngaged", paused)
    dry = spec(steps=[{"baseline": {"duration": "60s"}},
                      {"inject": {"name": "plan", "experiment": {"action": "podKill", "target": {"shardRef": "shard-00"}}}},
                      {"recover": {"duration": "30s"}}])
    assert run(in_baseline(), seen, 30, dry).status.phase == "Baseline"


def test_a_fast_burn_aborts_the_run():
    the_spec = with_slo(fastBurn={"burnRate": 14.4, "slos": ["booking"]})
    seen = Observed(lab=LAB, load=load("Running", 5), readings={"booking": budget(burn=30)})
    step = run(in_baseline(), seen, 80, the_spec)
    assert (step.status.phase, step.status.reason) == ("Aborted", "SLOBurnRateExceeded")
    assert "fast burn: SLO booking burns its budget at 30x" in step.status.message and step.stop


def test_an_aborted_drill_stops_its_children_then_lets_go():
    seen = Observed(lab=LAB, load=load("Running", 5),
                    experiments={f"{NAME}-kill-primary": experiment("kill-primary", "Recovering")})
    aborted = run(in_baseline(), Observed(lab=LAB, load=load("Running", 5), kill_switch="paused"), 30).status
    again = run(aborted, seen, 31)
    assert again.stop and again.finalizer is None and again.status == aborted
    gone = run(aborted, Observed(lab=LAB), 40)
    assert not gone.stop and gone.finalizer is False


# ---- the timeline ----------------------------------------------------------------------------


def test_the_childrens_timelines_merge_into_one_sorted_timeline():
    shard = {"metadata": {"name": "shard-00"}, "status": {"failoverHistory": [
        {"from": "shard-00-0", "to": "shard-00-1", "reason": "PrimaryUnhealthy", "startedAt": stamp(78),
         "durationSeconds": 2.5},
        {"from": "shard-00-1", "to": "shard-00-0", "reason": "PlannedSwitchover", "startedAt": stamp(-500)}]}}
    seen = Observed(lab=LAB, load=load("Running", 5, jobName="job-1"), shards=[shard], experiments={
        f"{NAME}-kill-primary": experiment("kill-primary", "Recovering", ["shard-00-0"], timeline=[
            {"time": stamp(75), "event": "Planned", "detail": "podKill on shard-00-0"},
            {"time": stamp(76), "event": "Injected", "detail": "deleted shard-00-0 (grace 0s)"}])})
    fired = run(in_baseline(), Observed(lab=LAB, load=load("Running", 5)), 75).status
    step = run(fired, seen, 90)
    timeline = [(e.time, e.source, e.event) for e in step.status.timeline]
    assert timeline == sorted(timeline, key=lambda t: (t[0], t[1] != "Drill"))
    sources = {source for _, source, _ in timeline}
    assert {"Drill", f"ChaosExperiment/{NAME}-kill-primary", "Shard/shard-00", f"PersonaLoad/{NAME}-load"} <= sources
    assert [(f.shard, f.from_, f.to) for f in step.status.failovers] == [("shard-00", "shard-00-0", "shard-00-1")]
    assert (at(78), "Shard/shard-00", "Failover") in timeline  # the failover before the window is left out
    assert not any(t == at(-500) for t, _, _ in timeline)


def test_the_timeline_is_capped_keeping_the_drills_own_entries():
    many = [{"time": stamp(75 + i * 0.01), "event": "Probe", "detail": str(i)} for i in range(400)]
    seen = Observed(lab=LAB, load=load("Running", 5),
                    experiments={f"{NAME}-kill-primary": experiment("kill-primary", "Recovering", timeline=many)})
    fired = run(in_baseline(), Observed(lab=LAB, load=load("Running", 5)), 75).status
    timeline = run(fired, seen, 90).status.timeline
    assert len(timeline) == status.TIMELINE_LENGTH
    assert [e.event for e in timeline if e.source == "Drill"][:3] == ["Preflight", "Baseline", "BaselineRunning"]
    assert timeline[-1].detail == "399" or timeline[-1].source == "Drill"


# ---- the children ----------------------------------------------------------------------------


def test_the_children_are_owned_labelled_and_the_load_covers_the_whole_run_with_its_ledger_on():
    body = {"apiVersion": "pim-sre.lab/v1alpha1", "kind": "Drill", "metadata": {"name": NAME, "namespace": "lab", "uid": "u-1"}}
    the_spec = spec(load={"target": {"labRef": "pim"}, "personas": [{"name": "patient", "weight": 1}],
                          "profile": {"rate": 5, "duration": "1h"}})
    children = desired.children(body, the_spec, True, ["kill-standby"])
    assert [(c["kind"], c["metadata"]["name"]) for c in children] == \
        [("PersonaLoad", f"{NAME}-load"), ("ChaosExperiment", f"{NAME}-kill-standby")]
    for child in children:
        assert child["metadata"]["labels"]["pim-sre.lab/drill"] == NAME
        assert child["metadata"]["ownerReferences"][0]["uid"] == "u-1"
    assert children[0]["spec"]["profile"]["duration"] == "180s" and children[0]["spec"]["ledger"] == {"enabled": True}
    assert children[1]["spec"]["target"] == {"shardRef": "shard-01", "mode": "one"}


def test_the_sample_drill_is_the_one_the_issue_asks_for():
    docs = [d for d in yaml.safe_load_all((ROOT / "samples/60-drills.yaml").read_text()) if d]
    sample = Drill.model_validate(next(d for d in docs if d["metadata"]["name"] == "primary-loss-under-load")).spec
    kill = sample.injections()[0].experiment
    assert (kill.action, kill.target.shard_ref, kill.dry_run) == ("podKill", "shard-00", False)
    assert sample.hypotheses.max_recovery_seconds == 15 and sample.hypotheses.max_lost_writes == 0
    assert {h.name for h in sample.hypotheses.slos} <= {
        d["metadata"]["name"] for d in yaml.safe_load_all((ROOT / "samples/30-slos.yaml").read_text()) if d}
    journeys = {j for p in sample.load.personas for j in p.journeys or []}
    assert {"bookEncounter", "submitClaim"} <= journeys


def test_stored_status_round_trips():
    current = run(in_baseline(), Observed(lab=LAB, load=load("Running", 5)), 75).status
    stored = copy.deepcopy(current.model_dump(mode="json", by_alias=True, exclude_none=True))
    assert status.previous({"status": stored}) == current


def test_a_podkill_on_a_shard_hits_its_current_primary():
    """ChaosTarget.shardRef picks the Shard's primary (status.currentPrimary), never another of
    its pods: a drill's podKill of a primary needs no more than shardRef."""
    injection = spec().injections()[0]
    pods = [{"metadata": {"name": f"shard-00-{i}"}, "status": {"phase": "Running"}} for i in range(3)]
    shard = {"status": {"currentPrimary": "shard-00-2"}}
    chosen = plan({"metadata": {"name": f"{NAME}-kill-primary", "uid": "u"}}, injection.experiment, pods, shard)
    assert chosen.targets == ["shard-00-2"] and chosen.matched == 3 and chosen.refusal is None


def test_the_phase_metric_knows_every_phase_of_the_model():
    assert metrics.DRILL_PHASES == get_args(Phase)

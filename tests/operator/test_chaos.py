"""The ChaosExperiment's pure functions: planning, blast radius, dry runs and the run's steps."""

from __future__ import annotations

import copy
import datetime as dt
import time

from cr_samples import sample, spec_of

from pimlab_operator.chaos import desired as chaos
from pimlab_operator.chaos import status as run
from pimlab_operator.chaos.model import ChaosExperimentStatus

POD_KILL = sample("ChaosExperiment", "pod-kill")
FAILOVER = sample("ChaosExperiment", "sql-failover-drill")
TARGET_LABELS = {"app.kubernetes.io/instance": "pim", "app.kubernetes.io/component": "patient"}


def pod(name: str, labels: dict, created: str = "2025-01-01T00:00:00Z", ready: bool = True) -> dict:
    return {"metadata": {"name": name, "labels": labels, "creationTimestamp": created},
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}


PODS = [pod(f"pim-patient-{i}", TARGET_LABELS) for i in range(4)] + [pod("pim-billing-0", {"x": "y"})]


def test_one_pod_is_planned_deterministically_from_the_selector():
    first = chaos.plan(POD_KILL, spec_of(POD_KILL), PODS, None)
    assert first.refusal is None and first.matched == 4 and len(first.targets) == 1
    assert first.targets[0].startswith("pim-patient-")
    assert chaos.plan(POD_KILL, spec_of(POD_KILL), list(reversed(PODS)), None).targets == first.targets


def test_plan_over_the_blast_radius_is_refused():
    body = copy.deepcopy(POD_KILL)
    body["spec"]["target"].update(mode="all")
    refused = chaos.plan(body, spec_of(body), PODS, None)
    assert refused.refusal[0] == "BlastRadiusExceeded" and len(refused.targets) == 4
    step = run.start(body, spec_of(body), PODS, None, True, at="2025-01-01T00:00:00Z")
    assert step.status.phase == "Aborted" and step.action is None
    assert "blast radius allows 1 pods" in step.status.abort_reason
    assert step.conditions[0].reason == "BlastRadiusExceeded"


def test_percent_limit_refuses_even_within_max_pods():
    body = copy.deepcopy(POD_KILL)
    body["spec"]["blastRadius"] = {"maxPods": 5, "maxPercent": 20}
    assert chaos.plan(body, spec_of(body), PODS, None).refusal[0] == "BlastRadiusExceeded"  # 1 of 4 = 25%


def test_dry_run_plans_and_injects_nothing():
    step = run.start(POD_KILL, spec_of(POD_KILL), PODS, None, True, at="2025-01-01T00:00:00Z")
    assert step.action is None and step.status.phase == "DryRun"
    assert step.status.verdict == "Inconclusive" and step.status.timeline[0].event == "Planned"
    assert step.status.planned_targets == chaos.plan(POD_KILL, spec_of(POD_KILL), PODS, None).targets


def test_shard_target_is_its_current_primary():
    shard_pods = [pod(f"shard-00-{i}", {}) for i in range(3)]
    shard = {"status": {"currentPrimary": "shard-00-1"}}
    planned = chaos.plan(FAILOVER, spec_of(FAILOVER), shard_pods, shard)
    assert planned.targets == ["shard-00-1"] and planned.matched == 3 and planned.refusal is None
    assert chaos.plan(FAILOVER, spec_of(FAILOVER), shard_pods, None).targets == ["shard-00-0"]


def _shard(primary: str = "shard-00-0", last: dict | None = None) -> dict:
    replicas = [{"pod": f"shard-00-{i}", "role": "primary" if f"shard-00-{i}" == primary else "secondary",
                 "ready": True, "streaming": True, "synchronousCommit": True, "lagBytes": i} for i in range(3)]
    return {"metadata": {"name": "shard-00"},
            "status": {"currentPrimary": primary, "replicas": replicas, **({"lastFailover": last} if last else {})}}


def test_sql_failover_asks_for_a_switchover_to_the_least_lagging_secondary():
    body = copy.deepcopy(FAILOVER)
    body["spec"]["dryRun"] = False
    shard_pods = [pod(f"shard-00-{i}", {}) for i in range(3)]
    step = run.start(body, spec_of(body), shard_pods, _shard(), True, at="2025-01-01T01:00:00Z")
    assert step.action == "requestSwitchover" and step.status.phase == "Running"
    assert step.status.affected_targets == ["shard-00-0", "shard-00-1"]
    assert chaos.needs_cleanup(spec_of(body))  # the Shard's switchover annotation must go again
    lonely = {"status": {"currentPrimary": "shard-00-0", "replicas": [
        {"pod": "shard-00-0", "role": "primary", "ready": True},
        {"pod": "shard-00-1", "role": "secondary", "ready": False, "streaming": True}]}}
    refused = run.start(body, spec_of(body), shard_pods, lonely, True)
    assert refused.action is None and refused.status.phase == "Failed"
    assert refused.conditions[0].reason == "NoSwitchoverTarget"


def test_sql_failover_recovers_when_the_shard_recorded_it_and_the_primary_service_took_a_write():
    body = copy.deepcopy(FAILOVER)
    body["spec"]["dryRun"] = False
    step = run.start(body, spec_of(body), [], _shard(), True, at="2025-01-01T01:00:00Z")
    assert step.status.phase == "Aborted"  # no running pod: nothing to fail over
    shard_pods = [pod(f"shard-00-{i}", {}) for i in range(3)]
    step = run.start(body, spec_of(body), shard_pods, _shard(), True, at="2025-01-01T01:00:00Z")
    after = run.injected(step.status, "asked", at="2025-01-01T01:00:01Z").status
    waiting = run.recover(spec_of(body), after, shard_pods, at="2025-01-01T01:00:03Z", shard=_shard())
    assert waiting.status.phase == "Recovering" and "fail over away from shard-00-0" in waiting.status.phase_reason
    record = {"from": "shard-00-0", "to": "shard-00-1", "reason": "PlannedSwitchover", "startedAt": "2025-01-01T01:00:02Z",
              "completedAt": "2025-01-01T01:00:04Z", "durationSeconds": 2.0, "outageSeconds": 2.0}
    moved = _shard("shard-00-1", record)
    assert run.failover_record(after, moved) == record
    old = _shard("shard-00-1", {**record, "startedAt": "2024-12-31T00:00:00Z"})
    assert run.failover_record(after, old) is None  # an earlier failover is not this run's
    no_write = run.recover(spec_of(body), after, shard_pods, at="2025-01-01T01:00:05Z", shard=moved)
    assert "waiting for a write" in no_write.status.phase_reason
    assert [e.event for e in no_write.status.timeline][-1] == "FailoverRecorded"
    done = run.recover(spec_of(body), after, shard_pods, at="2025-01-01T01:00:06Z", shard=moved,
                         write_at=dt.datetime(2025, 1, 1, 1, 0, 4, 500000, tzinfo=dt.timezone.utc)).status
    assert done.phase == "Completed" and done.verdict == "Passed" and done.recovery_seconds == 4.5
    assert [e.event for e in done.timeline][-2:] == ["FailoverRecorded", "TargetRecovered"]


def test_a_recovering_sql_failover_sees_the_shards_record_within_a_poll_not_at_the_next_resync(monkeypatch):
    """recoverySeconds counts from the injection to the probe write, which follows the Shard's
    record: watched every poll, so the wait for a resync (5 s) is not counted in it."""
    from pimlab_operator.chaos import step as chaos_step

    body = copy.deepcopy(FAILOVER)
    body["spec"]["dryRun"] = False
    shard_pods = [pod(f"shard-00-{i}", {}) for i in range(3)]
    planned = run.start(body, spec_of(body), shard_pods, _shard(), True, at="2025-01-01T01:00:00Z")
    after = run.injected(planned.status, "asked", at="2025-01-01T01:00:01Z").status
    record = {"from": "shard-00-0", "to": "shard-00-1", "reason": "PlannedSwitchover", "startedAt": "2025-01-01T01:00:01Z",
              "completedAt": "2025-01-01T01:00:01.5Z", "durationSeconds": 0.5, "outageSeconds": 0.3}
    def stored(*args):
        return {**_shard(*args), "metadata": {"name": "shard-00", "namespace": "lab"}}

    readings = iter([stored(), stored(), stored("shard-00-1", record)])
    reads = []

    def get(api_version, kind, name, namespace):
        reads.append((kind, namespace, name))
        return next(readings)

    monkeypatch.setattr(chaos_step.kube, "get", get)
    seen = chaos_step.await_failover_record(after, stored(), seconds=5, poll=0.01)
    assert run.failover_record(after, seen) == record and reads == [("Shard", "lab", "shard-00")] * 3
    readings = iter(stored, None)  # never records it: the last reading, after `seconds`
    started = time.monotonic()
    seen = chaos_step.await_failover_record(after, stored(), seconds=0.2, poll=0.01)
    assert run.failover_record(after, seen) is None and 0.2 <= time.monotonic() - started < 2


def test_status_messages_count_in_english():
    assert [run.count_of(1), run.count_of(2), run.count_of(1, "replacement pods")] == \
        ["1 pod", "2 pods", "1 replacement pod"]


def test_container_kill_recovers_when_the_same_pod_restarted_its_container_and_is_ready():
    body = copy.deepcopy(POD_KILL)
    body["spec"].update(action="containerKill", dryRun=False)
    planned = chaos.plan(body, spec_of(body), PODS, None)
    step = run.start(body, spec_of(body), PODS, None, True, at="2025-01-01T01:00:00Z")
    assert step.action == "killContainers" and not chaos.needs_cleanup(spec_of(body))
    after = run.injected(step.status, "killed", at="2025-01-01T01:00:01Z", affected=planned.targets).status
    (name,) = planned.targets
    same = pod(name, TARGET_LABELS)
    waiting = run.recover(spec_of(body), after, [same], at="2025-01-01T01:00:02Z")
    assert waiting.status.phase == "Recovering"  # not seen dying yet
    same["status"]["containerStatuses"] = [{"name": "app", "restartCount": 1,
                                            "lastState": {"terminated": {"finishedAt": "2025-01-01T01:00:01Z"}}}]
    same["status"]["conditions"][0]["lastTransitionTime"] = "2025-01-01T01:00:07Z"
    done = run.recover(spec_of(body), after, [same], at="2025-01-01T01:00:09Z").status
    assert done.phase == "Completed" and done.recovery_seconds == 7 and done.verdict == "Passed"


def test_governance_refusal_and_slo_check_shape_the_first_step():
    body = copy.deepcopy(POD_KILL)
    body["spec"]["dryRun"] = False
    refused = run.start(body, spec_of(body), PODS, None, True, refusal=("NamespaceNotOptedIn", "not opted in"))
    assert refused.action is None and refused.status.phase == "Aborted"
    assert refused.conditions[0].reason == "NamespaceNotOptedIn" and refused.status.abort_reason == "not opted in"
    ok = run.start(body, spec_of(body), PODS, None, True, slo_checked="before injection: fine", at="2025-01-01T01:00:00Z")
    assert [e.event for e in ok.status.timeline] == ["Planned", "Validated", "SLOChecked", "Injecting"]


def test_abort_stops_a_running_experiment_with_its_reason():
    body = copy.deepcopy(POD_KILL)
    body["spec"]["dryRun"] = False
    step = run.start(body, spec_of(body), PODS, None, True, at="2025-01-01T01:00:00Z")
    running = run.injected(step.status, "deleted", at="2025-01-01T01:00:01Z").status
    aborted = run.abort(running, "KillSwitchEngaged", "the chaos kill switch is engaged", at="2025-01-01T01:00:02Z")
    assert aborted.status.phase == "Aborted" and aborted.status.verdict == "Failed"
    assert aborted.status.timeline[-1].event == "Aborted"
    assert {c.type: (c.status, c.reason) for c in aborted.conditions}["Degraded"] == (True, "KillSwitchEngaged")


def test_pod_kill_records_intention_then_recovers_with_measured_time():
    body = copy.deepcopy(POD_KILL)
    body["spec"]["dryRun"] = False
    planned = chaos.plan(body, spec_of(body), PODS, None)
    step = run.start(body, spec_of(body), PODS, None, True, at="2025-01-01T01:00:00Z")
    assert step.action == "deletePods" and step.status.phase == "Running"
    assert [e.event for e in step.status.timeline] == ["Planned", "Validated", "Injecting"]
    after = run.injected(step.status, "deleted", at="2025-01-01T01:00:01Z").status
    assert after.phase == "Recovering" and after.timeline[-1].event == "Injected"
    survivors = [p for p in PODS if p["metadata"]["name"] not in planned.targets]
    waiting = run.recover(spec_of(body), after, survivors, at="2025-01-01T01:00:05Z")
    assert waiting.status.phase == "Recovering"
    replacement = pod("pim-patient-new", TARGET_LABELS, created="2025-01-01T01:00:02Z")
    done = run.recover(spec_of(body), after, survivors + [replacement], at="2025-01-01T01:00:12Z").status
    assert done.phase == "Completed" and done.verdict == "Passed" and done.recovery_seconds == 12
    replacement["status"]["conditions"][0]["lastTransitionTime"] = "2025-01-01T01:00:04Z"  # the kubelet's own time
    exact = run.recover(spec_of(body), after, survivors + [replacement], at="2025-01-01T01:00:12Z").status
    assert exact.recovery_seconds == 4
    assert done.timeline[-1].event == "Recovered"


def test_no_recovery_within_the_duration_fails_the_verdict():
    body = copy.deepcopy(POD_KILL)
    body["spec"]["dryRun"] = False
    step = run.start(body, spec_of(body), PODS, None, True, at="2025-01-01T01:00:00Z")
    after = run.injected(step.status, "deleted", at="2025-01-01T01:00:01Z").status
    late = run.recover(spec_of(body), after, [], at="2025-01-01T01:03:00Z").status  # duration 2m
    assert late.verdict == "Failed" and late.timeline[-1].event == "RecoveryTimedOut"


def test_network_fault_renders_chaos_mesh_on_exactly_the_planned_pods_or_fails_without_it():
    body = copy.deepcopy(POD_KILL)
    body["spec"].update(action="networkDelay", dryRun=False, parameters={"latency": "200ms", "jitter": "20ms"})
    planned = chaos.plan(body, spec_of(body), PODS, None)
    step = run.start(body, spec_of(body), PODS, None, True)
    assert step.action == "applyChaosMesh"
    child = step.children[0]
    assert child["kind"] == "NetworkChaos" and child["spec"]["action"] == "delay"
    assert child["spec"]["selector"] == {"pods": {"lab": planned.targets}}
    assert child["spec"]["delay"] == {"latency": "200ms", "jitter": "20ms"} and child["spec"]["duration"] == "2m"
    missing = run.start(body, spec_of(body), PODS, None, False)
    assert missing.status.phase == "Failed" and missing.conditions[0].reason == "ChaosMeshNotInstalled"


def test_spec_change_is_a_new_run_and_a_finished_run_is_not():
    body = copy.deepcopy(POD_KILL)
    assert run.is_new_run(body)
    body["status"] = {"phase": "DryRun", "observedGeneration": 1}
    assert not run.is_new_run(body)
    body["metadata"]["generation"] = 2
    assert run.is_new_run(body)


def test_what_the_slos_read_goes_before_the_abort_in_the_timeline():
    running = run.injected(ChaosExperimentStatus(timeline=[], started_at="2025-01-01T01:00:00Z"), "deleted",
                           at="2025-01-01T01:00:01Z").status
    aborted = run.with_event(run.abort(running, "SLOBurnRateExceeded", "burns", at="2025-01-01T01:00:09Z"),
                               "SLOChecked", "booking: burn 30x", at="2025-01-01T01:00:09Z")
    assert [e.event for e in aborted.status.timeline] == ["Injected", "SLOChecked", "Aborted"]


def test_grafana_annotations_mark_a_run_start_and_its_span_and_nothing_else():
    from pimlab_operator.chaos.grafana import annotation

    spec = spec_of(POD_KILL)  # podKill, reference ADR-011
    body = {"metadata": {"name": "kill-one"}, "status": {"phase": "Pending"}}
    running = {"phase": "Running", "startedAt": "2026-12-01T03:00:00Z", "plannedTargets": ["pod-a"]}
    status = ChaosExperimentStatus.model_validate
    start = annotation(body, spec, status(running))
    assert start["time"] == 1796094000000 and "timeEnd" not in start
    assert start["tags"] == ["pim-sre.lab/chaos", "experiment:kill-one", "action:podKill"]
    assert start["text"] == "chaos kill-one: podKill on pod-a (ADR-011)"
    ended = {**running, "phase": "Completed", "verdict": "Passed", "phaseReason": "pod-a replaced",
             "recoverySeconds": 4.2, "completedAt": "2026-12-01T03:00:10Z"}
    span = annotation({**body, "status": {**running, "phase": "Recovering"}}, spec, status(ended))
    assert (span["time"], span["timeEnd"]) == (1796094000000, 1796094010000) and "verdict:Passed" in span["tags"]
    assert span["text"] == "chaos kill-one: Completed, verdict Passed: pod-a replaced (recovered in 4.2 s)"
    # a dry run, a refusal before injection and an unchanged phase are not annotated
    assert annotation(body, spec, status({"phase": "DryRun"})) is None
    assert annotation(body, spec, status({"phase": "Aborted", "verdict": "Failed"})) is None
    assert annotation({**body, "status": running}, spec, status(running)) is None

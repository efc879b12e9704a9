"""The ChaosExperiment's pure functions: planning, blast radius, dry runs and the run's steps."""

from __future__ import annotations

import copy

from cr_samples import sample, spec_of

from pimlab_operator.chaos import desired as chaos

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
    step = chaos.start(body, spec_of(body), refused, True, at="2025-01-01T00:00:00Z")
    assert step.status["phase"] == "Aborted" and step.action is None
    assert "blast radius allows 1 pods" in step.status["abortReason"]
    assert step.conditions[0].reason == "BlastRadiusExceeded"


def test_percent_limit_refuses_even_within_max_pods():
    body = copy.deepcopy(POD_KILL)
    body["spec"]["blastRadius"] = {"maxPods": 5, "maxPercent": 20}
    assert chaos.plan(body, spec_of(body), PODS, None).refusal[0] == "BlastRadiusExceeded"  # 1 of 4 = 25%


def test_dry_run_plans_and_injects_nothing():
    step = chaos.start(POD_KILL, spec_of(POD_KILL), chaos.plan(POD_KILL, spec_of(POD_KILL), PODS, None), True, at="2025-01-01T00:00:00Z")
    assert step.action is None and step.status["phase"] == "Planned"
    assert step.status["verdict"] == "Inconclusive" and step.status["timeline"][0]["event"] == "Planned"
    assert step.status["plannedTargets"] == chaos.plan(POD_KILL, spec_of(POD_KILL), PODS, None).targets


def test_shard_target_is_its_current_primary():
    shard_pods = [pod(f"shard-00-{i}", {}) for i in range(3)]
    shard = {"status": {"currentPrimary": "shard-00-1"}}
    planned = chaos.plan(FAILOVER, spec_of(FAILOVER), shard_pods, shard)
    assert planned.targets == ["shard-00-1"] and planned.matched == 3 and planned.refusal is None
    assert chaos.plan(FAILOVER, spec_of(FAILOVER), shard_pods, None).targets == ["shard-00-0"]


def test_sql_failover_for_real_waits_for_the_shard_engine():
    body = copy.deepcopy(FAILOVER)
    body["spec"]["dryRun"] = False
    step = chaos.start(body, spec_of(body), chaos.plan(body, spec_of(body), [pod(f"shard-00-{i}", {}) for i in range(3)], None), True)
    assert step.action is None and step.status["phase"] == "Pending"
    assert step.conditions[0].reason == "AwaitingShardFailoverSupport"


def test_pod_kill_records_intention_then_recovers_with_measured_time():
    body = copy.deepcopy(POD_KILL)
    body["spec"]["dryRun"] = False
    planned = chaos.plan(body, spec_of(body), PODS, None)
    step = chaos.start(body, spec_of(body), planned, True, at="2025-01-01T01:00:00Z")
    assert step.action == "deletePods" and step.status["phase"] == "Injecting"
    assert [e["event"] for e in step.status["timeline"]] == ["Planned", "Injecting"]
    after = chaos.injected(step.status, "deleted", at="2025-01-01T01:00:01Z").status
    assert after["phase"] == "Recovering" and after["timeline"][-1]["event"] == "Injected"
    survivors = [p for p in PODS if p["metadata"]["name"] not in planned.targets]
    waiting = chaos.recover(body, spec_of(body), after, survivors, at="2025-01-01T01:00:05Z")
    assert waiting.status["phase"] == "Recovering"
    replacement = pod("pim-patient-new", TARGET_LABELS, created="2025-01-01T01:00:02Z")
    done = chaos.recover(body, spec_of(body), after, survivors + [replacement], at="2025-01-01T01:00:12Z").status
    assert done["phase"] == "Completed" and done["verdict"] == "Passed" and done["recoverySeconds"] == 12
    assert done["timeline"][-1]["event"] == "Recovered"


def test_no_recovery_within_the_duration_fails_the_verdict():
    body = copy.deepcopy(POD_KILL)
    body["spec"]["dryRun"] = False
    step = chaos.start(body, spec_of(body), chaos.plan(body, spec_of(body), PODS, None), True, at="2025-01-01T01:00:00Z")
    after = chaos.injected(step.status, "deleted", at="2025-01-01T01:00:01Z").status
    late = chaos.recover(body, spec_of(body), after, [], at="2025-01-01T01:03:00Z").status  # duration 2m
    assert late["verdict"] == "Failed" and late["timeline"][-1]["event"] == "RecoveryTimedOut"


def test_network_fault_renders_chaos_mesh_on_exactly_the_planned_pods_or_fails_without_it():
    body = copy.deepcopy(POD_KILL)
    body["spec"].update(action="networkDelay", dryRun=False, parameters={"latency": "200ms", "jitter": "20ms"})
    planned = chaos.plan(body, spec_of(body), PODS, None)
    step = chaos.start(body, spec_of(body), planned, True)
    assert step.action == "applyChaosMesh"
    child = step.children[0]
    assert child["kind"] == "NetworkChaos" and child["spec"]["action"] == "delay"
    assert child["spec"]["selector"] == {"pods": {"lab": planned.targets}}
    assert child["spec"]["delay"] == {"latency": "200ms", "jitter": "20ms"} and child["spec"]["duration"] == "2m"
    missing = chaos.start(body, spec_of(body), planned, False)
    assert missing.status["phase"] == "Failed" and missing.conditions[0].reason == "ChaosMeshNotInstalled"


def test_spec_change_is_a_new_run_and_a_finished_run_is_not():
    body = copy.deepcopy(POD_KILL)
    assert chaos.is_new_run(body)
    body["status"] = {"phase": "Planned", "observedGeneration": 1}
    assert not chaos.is_new_run(body)
    body["metadata"]["generation"] = 2
    assert chaos.is_new_run(body)

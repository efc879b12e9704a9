"""Drills against a real apiserver, the operator as its own process and ServiceAccount, on kwok:
the state machine through every phase with dry-run injections, the preflight refusal, two
drills on one Lab (the second waits), the deadline, and deleting a drill mid-run.

Nothing runs inside a pod here. The namespace places its pods on no node, so the engine's pods
stay Pending until the test moves them, through the pod status subresource, to Running (the
baseline starts) and later to Succeeded without a report (the load ends Failed NoResults, as it
does on kwok). With no engine report there is no ledger: a drill judged here fails its
maxLostWrites hypothesis, and says so. The run on the real node is a separate test."""

from __future__ import annotations

import json
import time

import pytest

from operator_process import operator_process
from pimlab.waiting import wait_for

NOWHERE = {"scheduler.alpha.kubernetes.io/node-selector": "pim-sre.lab/drill-test=nowhere"}
VICTIMS = {"app": "victim"}
FINALIZER = "pim-sre.lab/drill-cleanup"


@pytest.fixture(scope="module")
def operator(cluster, crds_installed, tmp_path_factory):
    namespace = {"apiVersion": "v1", "kind": "Namespace",
                 "metadata": {"name": "placeholder", "annotations": NOWHERE, "labels": {"pim-sre.lab/chaos": "enabled"}}}
    with operator_process(cluster, tmp_path_factory, "drill", documents=[namespace]) as process:
        yield process
        # while the operator runs: their finalizers would hold the namespace's deletion forever
        cluster.kubectl("delete", "drill,chaosexperiment", "--all", "-n", process.namespace, "--timeout=120s",
                        check=False, timeout=130)


def lab(cluster, name: str, namespace: str) -> str:
    cluster.apply({"apiVersion": "pim-sre.lab/v1alpha1", "kind": "Lab", "metadata": {"name": name, "namespace": namespace},
                   "spec": {"shardSelector": {"matchLabels": {"lab": name}}}})
    return name


def drill(name: str, namespace: str, lab_name: str, **spec) -> dict:
    plan = {"action": "podKill", "target": {"selector": {"matchLabels": VICTIMS}}, "dryRun": True,
            "blastRadius": {"maxPods": 1, "maxPercent": 50}}
    base = {
        "labRef": lab_name,
        "load": {"target": {"labRef": lab_name}, "personas": [{"name": "patient", "weight": 1}], "profile": {"rate": 1}},
        "steps": [{"baseline": {"duration": "3s"}},
                  {"inject": {"name": "first", "after": "0s", "experiment": plan}},
                  {"inject": {"name": "second", "after": "2s", "experiment": plan}},
                  {"recover": {"duration": "3s"}}],
        "timeout": "5m",
    }
    return {"apiVersion": "pim-sre.lab/v1alpha1", "kind": "Drill", "metadata": {"name": name, "namespace": namespace},
            "spec": {**base, **spec}}


def phase_of(cluster, name: str, namespace: str) -> tuple[str | None, str | None]:
    status = (cluster.get("drill", name, namespace) or {}).get("status") or {}
    return status.get("phase"), status.get("reason")


def reached(cluster, name: str, namespace: str, phases: tuple[str, ...], timeout: float = 90) -> dict:
    return wait_for(lambda: (o := cluster.get("drill", name, namespace))
                    and (o.get("status") or {}).get("phase") in phases and o,
                    timeout=timeout, what=f"Drill {name} in {phases}")


def condition(obj: dict, ctype: str) -> dict:
    return next((c for c in (obj.get("status") or {}).get("conditions") or [] if c["type"] == ctype), {})


def engine_pods(cluster, load: str, namespace: str) -> list[str]:
    out = cluster.kubectl("get", "pods", "-n", namespace, "-l", f"pim-sre.lab/personaload={load}", "-o", "json")
    return [p["metadata"]["name"] for p in json.loads(out.stdout)["items"]]


def set_pod_phase(cluster, pods: list[str], namespace: str, phase: str) -> None:
    for pod in pods:
        cluster.kubectl("patch", "pod", pod, "-n", namespace, "--subresource=status", "--type=merge",
                        "-p", json.dumps({"status": {"phase": phase}}))


def test_preflight_refuses_a_drill_whose_slo_cannot_be_read_and_starts_nothing(cluster, operator):
    ns = operator.namespace
    lab_name = lab(cluster, "pim-refused", ns)
    cluster.apply(drill("refused", ns, lab_name, hypotheses={"slos": [{"name": "no-such-slo", "maxBudgetBurn": 0.05}]}))
    obj = reached(cluster, "refused", ns, ("Aborted",))
    status = obj["status"]
    assert status["verdict"] == "Aborted" and status["reason"] == "SLOUnreadable" and status["score"] == 0
    assert "refused, nothing started" in status["message"] and "no such SLO" in status["message"]
    assert condition(obj, "Failed")["status"] == "True" and condition(obj, "Failed")["reason"] == "SLOUnreadable"
    assert condition(obj, "Ready")["status"] == "False"
    assert cluster.get("personaload", "refused-load", ns) is None
    assert [e["event"] for e in status["timeline"]] == ["Preflight", "Aborted"]
    wait_for(lambda: FINALIZER not in (cluster.get("drill", "refused", ns)["metadata"].get("finalizers") or []),
             timeout=30, what="the finalizer released")


def test_every_phase_with_dry_run_injections(cluster, operator):
    ns = operator.namespace
    lab_name = lab(cluster, "pim-dry", ns)
    cluster.apply([{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"victim-{i}", "namespace": ns, "labels": VICTIMS},
                    "spec": {"containers": [{"name": "app", "image": "busybox"}]}} for i in range(2)])
    cluster.apply(drill("dry-path", ns, lab_name))
    obj = reached(cluster, "dry-path", ns, ("Baseline",))
    assert FINALIZER in obj["metadata"]["finalizers"]
    load = wait_for(lambda: cluster.get("personaload", "dry-path-load", ns), timeout=30, what="the drill's load")
    assert load["metadata"]["labels"]["pim-sre.lab/drill"] == "dry-path"
    assert load["metadata"]["ownerReferences"][0]["name"] == "dry-path"
    assert load["spec"]["profile"]["duration"] == "8s" and load["spec"]["target"] == {"labRef": lab_name}
    assert phase_of(cluster, "dry-path", ns) == ("Baseline", "WaitingForLoad")
    pods = wait_for(lambda: engine_pods(cluster, "dry-path-load", ns), timeout=60, what="the engine's pod")
    set_pod_phase(cluster, pods, ns, "Running")
    reached(cluster, "dry-path", ns, ("Injecting", "Recovering", "Judging"), timeout=60)
    obj = reached(cluster, "dry-path", ns, ("Judging",), timeout=60)
    status = obj["status"]
    assert [(r["name"], r["experiment"]) for r in status["injections"]] == \
        [("first", "dry-path-first"), ("second", "dry-path-second")]
    assert status["window"]["start"] and status["window"]["end"]
    for record in status["injections"]:
        experiment = cluster.get("chaosexperiment", record["experiment"], ns)
        assert experiment["spec"]["dryRun"] is True and experiment["status"]["phase"] == "DryRun"
        assert experiment["metadata"]["labels"]["pim-sre.lab/drill"] == "dry-path"
    assert sorted(pod["metadata"]["name"] for pod in [cluster.get("pod", f"victim-{i}", ns) for i in range(2)]) == \
        ["victim-0", "victim-1"]  # a dry run deletes nothing
    set_pod_phase(cluster, pods, ns, "Succeeded")
    obj = reached(cluster, "dry-path", ns, ("Passed", "Failed", "Aborted"), timeout=90)
    status = obj["status"]
    assert status["phase"] == "Failed" and status["verdict"] == "Failed" and status["score"] == 0
    lost = next(h for h in status["hypotheses"] if h["name"] == "maxLostWrites")
    assert lost["met"] is False and "no ledger" in lost["source"]
    assert condition(obj, "Failed")["reason"] == "HypothesisFailed" and condition(obj, "Ready")["status"] == "False"
    drill_events = [e["event"] for e in status["timeline"] if e["source"] == "Drill"]
    for phase in ("Preflight", "Baseline", "BaselineRunning", "Injecting", "Injected", "Recovering", "Judging", "Failed"):
        assert phase in drill_events, (phase, drill_events)
    sources = {e["source"] for e in status["timeline"]}
    assert {"ChaosExperiment/dry-path-first", "ChaosExperiment/dry-path-second", "PersonaLoad/dry-path-load"} <= sources
    for record in status["injections"]:
        assert record["outcome"] == "DryRun" and record["targets"]
    # The children stay, as evidence; the finalizer goes.
    assert cluster.get("personaload", "dry-path-load", ns) and cluster.get("chaosexperiment", "dry-path-first", ns)
    wait_for(lambda: FINALIZER not in (cluster.get("drill", "dry-path", ns)["metadata"].get("finalizers") or []),
             timeout=30, what="the finalizer released")
    events = cluster.kubectl("get", "events", "-n", ns, "--field-selector", "involvedObject.name=dry-path",
                             "-o", "json").stdout
    reasons = {e["reason"] for e in json.loads(events)["items"]}
    assert {"Preflight", "Baseline", "Injecting", "Recovering", "Judging", "Failed"} <= reasons


def test_a_second_drill_waits_the_deadline_aborts_the_first_and_deleting_one_mid_run_stops_its_load(cluster, operator):
    ns = operator.namespace
    lab_name = lab(cluster, "pim-busy", ns)
    cluster.apply(drill("stuck", ns, lab_name, timeout="25s"))  # its load never runs: nobody moves its pod
    reached(cluster, "stuck", ns, ("Baseline",))
    time.sleep(1)  # a later creationTimestamp
    cluster.apply(drill("queued", ns, lab_name))
    wait_for(lambda: phase_of(cluster, "queued", ns) == ("Pending", "WaitingForDrill"), timeout=30,
             what="the second drill waiting")
    assert "Drill stuck" in cluster.get("drill", "queued", ns)["status"]["message"]
    assert cluster.get("personaload", "queued-load", ns) is None
    obj = reached(cluster, "stuck", ns, ("Aborted",), timeout=90)
    assert obj["status"]["reason"] == "DeadlineExceeded"
    wait_for(lambda: cluster.get("personaload", "stuck-load", ns) is None, timeout=60, what="the aborted drill's load stopped")
    wait_for(lambda: FINALIZER not in (cluster.get("drill", "stuck", ns)["metadata"].get("finalizers") or []),
             timeout=30, what="the aborted drill letting go")
    reached(cluster, "queued", ns, ("Baseline",), timeout=60)
    wait_for(lambda: cluster.get("personaload", "queued-load", ns), timeout=30, what="the second drill's load")
    cluster.kubectl("delete", "drill", "queued", "-n", ns, "--wait=false")
    wait_for(lambda: cluster.get("drill", "queued", ns) is None, timeout=90, what="the deleted drill gone")
    assert cluster.get("personaload", "queued-load", ns) is None

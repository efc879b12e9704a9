"""ChaosExperiment governance against a real apiserver, the operator as its own process and
ServiceAccount: dry runs change nothing, the blast radius and namespace opt-in are enforced when
the run starts, the kill switch aborts a running experiment and refuses new ones, and whatever
a run injected (a switchover request on a Shard, a Chaos Mesh object) is removed when it is
aborted or deleted. Pods here run on kwok nodes (nothing inside them); the real-node test
kills real processes."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from operator_process import operator_process
from pimlab.waiting import wait_for

ROOT = Path(__file__).resolve().parents[2]
OPT_IN = "pim-sre.lab/chaos=enabled"
KILL_SWITCH = "pim-sre.lab/chaos-paused"
LABELS = {"app": "victim"}


def bare_pod(name: str, namespace: str) -> dict:
    """A pod with no controller: nothing replaces it, so a kill leaves the run Recovering."""
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace, "labels": LABELS},
            "spec": {"containers": [{"name": "app", "image": "busybox"}]}}


def experiment(name: str, namespace: str, **spec) -> dict:
    base = {"action": "podKill", "target": {"selector": {"matchLabels": LABELS}, "mode": "one"},
            "blastRadius": {"maxPods": 1, "maxPercent": 50}, "duration": "10m", "dryRun": False,
            "reference": "ADR-011"}
    return {"apiVersion": "pim-sre.lab/v1alpha1", "kind": "ChaosExperiment",
            "metadata": {"name": name, "namespace": namespace}, "spec": {**base, **spec}}


def pod_uids(cluster, namespace: str) -> dict[str, str]:
    import json
    items = json.loads(cluster.kubectl("get", "pods", "-n", namespace, "-l", "app=victim", "-o", "json").stdout)["items"]
    return {p["metadata"]["name"]: p["metadata"]["uid"] for p in items if not p["metadata"].get("deletionTimestamp")}


def settled(cluster, name: str, namespace: str, phases=("DryRun", "Completed", "Aborted", "Failed"),
            timeout: float = 60) -> dict:
    return wait_for(lambda: (o := cluster.get("chaosexperiment", name, namespace))
                    and (o.get("status") or {}).get("phase") in phases and o,
                    timeout=timeout, what=f"ChaosExperiment {name} in {phases}")


def condition(obj: dict, ctype: str = "Ready") -> dict:
    return next((c for c in (obj.get("status") or {}).get("conditions") or [] if c["type"] == ctype), {})


@pytest.fixture(scope="module")
def operator(cluster, crds_installed, thirdparty_crds, tmp_path_factory):
    with operator_process(cluster, tmp_path_factory, "chaos") as process:
        yield process


@pytest.fixture(scope="module")
def lab(cluster, operator):
    ns = operator.namespace
    cluster.kubectl("label", "namespace", ns, OPT_IN)
    cluster.apply([bare_pod(f"victim-{i}", ns) for i in range(4)])
    wait_for(lambda: len(pod_uids(cluster, ns)) == 4, what="the victim pods")
    return ns


@pytest.fixture
def kill_switch(cluster, operator):
    """Engage the kill switch on the operator's namespace; always released afterwards."""
    def engage():
        cluster.kubectl("annotate", "namespace", operator.operator_namespace, f"{KILL_SWITCH}=true", "--overwrite")
    yield engage
    cluster.kubectl("annotate", "namespace", operator.operator_namespace, f"{KILL_SWITCH}-", check=False)


def test_dry_run_lists_the_targets_and_changes_nothing(cluster, lab):
    before = pod_uids(cluster, lab)
    cluster.apply(experiment("preview", lab, dryRun=True, target={
        "selector": {"matchLabels": LABELS}, "mode": "fixed", "value": 2}, blastRadius={"maxPods": 2, "maxPercent": 50}))
    obj = settled(cluster, "preview", lab)
    status = obj["status"]
    assert status["phase"] == "DryRun" and condition(obj)["reason"] == "DryRun"
    assert len(status["plannedTargets"]) == 2 and set(status["plannedTargets"]) <= set(before)
    assert [e["event"] for e in status["timeline"]] == ["Planned", "Validated"]
    assert pod_uids(cluster, lab) == before
    assert "pim-sre.lab/chaos-cleanup" not in obj["metadata"].get("finalizers", [])  # nothing to clean up


def test_blast_radius_over_the_limit_is_refused_when_the_run_starts(cluster, lab):
    before = pod_uids(cluster, lab)
    cluster.apply(experiment("too-wide", lab, target={"selector": {"matchLabels": LABELS}, "mode": "all"}))
    obj = settled(cluster, "too-wide", lab)
    assert obj["status"]["phase"] == "Aborted" and condition(obj)["reason"] == "BlastRadiusExceeded"
    assert "plan hits 4 of 4 matching pods" in obj["status"]["abortReason"]
    assert pod_uids(cluster, lab) == before


def test_a_namespace_that_did_not_opt_in_and_a_protected_one_are_refused(cluster, lab, namespace):
    cluster.apply(bare_pod("bystander", namespace))
    wait_for(lambda: pod_uids(cluster, namespace), what="the bystander pod")
    bystander = pod_uids(cluster, namespace)
    cluster.apply(experiment("elsewhere", lab, target={"selector": {"matchLabels": LABELS, "namespace": namespace}}))
    obj = settled(cluster, "elsewhere", lab)
    assert obj["status"]["phase"] == "Aborted" and condition(obj)["reason"] == "NamespaceNotOptedIn"
    assert f"kubectl label namespace {namespace} pim-sre.lab/chaos=enabled" in obj["status"]["abortReason"]
    cluster.kubectl("label", "namespace", "kube-system", OPT_IN, "--overwrite")
    try:
        cluster.apply(experiment("system", lab, target={"selector": {"matchLabels": {"component": "x"},
                                                                    "namespace": "kube-system"}}))
        assert condition(settled(cluster, "system", lab))["reason"] == "ProtectedNamespace"
    finally:
        cluster.kubectl("label", "namespace", "kube-system", "pim-sre.lab/chaos-")
    assert pod_uids(cluster, namespace) == bystander


def _shard_with_pods(cluster, lab: str) -> None:
    shard = next(d for d in yaml.safe_load_all((ROOT / "samples/postgres/20-shards.yaml").read_text())
                 if d and d["metadata"]["name"] == "shard-00")
    shard["metadata"]["namespace"] = lab
    cluster.apply(shard)
    wait_for(lambda: cluster.kubectl("get", "pod", "shard-00-0", "-n", lab, check=False).returncode == 0,
             timeout=60, what="the Shard's first pod")


def _switchover(name: str, lab: str) -> dict:
    return experiment(name, lab, action="sqlFailover", target={"shardRef": "shard-00"},
                      parameters={"switchoverTo": "shard-00-1"}, blastRadius={"maxPods": 1, "maxPercent": 34})


def _annotations(cluster, lab: str) -> dict:
    return cluster.get("shard", "shard-00", lab)["metadata"].get("annotations") or {}


def test_kill_switch_aborts_a_running_experiment_cleans_up_and_refuses_new_ones(cluster, lab, kill_switch):
    _shard_with_pods(cluster, lab)
    cluster.apply(_switchover("switch", lab))
    running = settled(cluster, "switch", lab, phases=("Recovering",))
    assert "pim-sre.lab/chaos-cleanup" in running["metadata"]["finalizers"]
    assert _annotations(cluster, lab)["pim-sre.lab/switchover-to"] == "shard-00-1"  # kwok: nobody acts on it

    kill_switch()
    aborted = settled(cluster, "switch", lab, phases=("Aborted",), timeout=30)
    assert condition(aborted, "Degraded")["reason"] == "KillSwitchEngaged"
    assert "kill switch is engaged" in aborted["status"]["abortReason"]
    clean = wait_for(lambda: (o := cluster.get("chaosexperiment", "switch", lab))
                     and "pim-sre.lab/chaos-cleanup" not in (o["metadata"].get("finalizers") or []) and o,
                     timeout=30, what="the finalizer released after cleanup")
    assert clean["status"]["timeline"][-1]["event"] == "CleanedUp"
    assert "switchover request on Shard/shard-00" in clean["status"]["timeline"][-1]["detail"]
    assert "pim-sre.lab/switchover-to" not in _annotations(cluster, lab)

    before = pod_uids(cluster, lab)
    cluster.apply(experiment("while-paused", lab))
    refused = settled(cluster, "while-paused", lab)
    assert refused["status"]["phase"] == "Aborted" and condition(refused)["reason"] == "KillSwitchEngaged"
    cluster.apply(experiment("preview-while-paused", lab, dryRun=True))
    assert settled(cluster, "preview-while-paused", lab)["status"]["phase"] == "DryRun"  # a preview changes nothing
    assert pod_uids(cluster, lab) == before


def test_deleting_running_experiments_removes_what_they_injected(cluster, lab):
    _shard_with_pods(cluster, lab)
    cluster.apply(_switchover("switch-deleted", lab))
    settled(cluster, "switch-deleted", lab, phases=("Recovering",))
    cluster.apply(experiment("delay", lab, action="networkDelay", parameters={"latency": "200ms"}))
    running = settled(cluster, "delay", lab, phases=("Recovering",))
    (generated,) = running["status"]["generatedObjects"]
    assert generated["kind"] == "NetworkChaos"
    chaos = cluster.get("networkchaos", generated["name"], lab)
    assert chaos["spec"]["selector"] == {"pods": {lab: running["status"]["plannedTargets"]}}

    cluster.kubectl("delete", "chaosexperiment", "delay", "switch-deleted", "-n", lab, "--wait=false")
    wait_for(lambda: cluster.get("chaosexperiment", "delay", lab) is None
             and cluster.get("chaosexperiment", "switch-deleted", lab) is None,
             timeout=30, what="both experiments gone (finalizer released)")
    assert cluster.get("networkchaos", generated["name"], lab) is None
    assert "pim-sre.lab/switchover-to" not in _annotations(cluster, lab)


def test_container_kill_of_a_pod_without_a_runtime_fails_plainly(cluster, lab):
    before = pod_uids(cluster, lab)
    cluster.apply(experiment("kill-container", lab, action="containerKill"))
    obj = settled(cluster, "kill-container", lab)
    assert obj["status"]["phase"] == "Failed"
    assert condition(obj, "Degraded")["reason"] in ("CRIUnavailable", "NoContainer")
    assert pod_uids(cluster, lab) == before


def test_a_scheduled_experiment_waits_for_its_minute_runs_and_replaces_a_run_still_active(cluster, lab):
    cluster.apply(experiment("every-minute", lab, schedule="* * * * *", concurrencyPolicy="Replace",
                             target={"selector": {"matchLabels": {"app": "victim", "scheduled": "yes"}}},
                             blastRadius={"maxPods": 1, "maxPercent": 100}))
    cluster.apply([{**bare_pod(f"scheduled-{i}", lab), "metadata": {
        "name": f"scheduled-{i}", "namespace": lab, "labels": {**LABELS, "scheduled": "yes"}}} for i in range(2)])
    scheduled = settled(cluster, "every-minute", lab, phases=("Scheduled",))
    due = scheduled["status"]["nextRunAt"]
    first = wait_for(lambda: (o := cluster.get("chaosexperiment", "every-minute", lab))
                     and o["status"].get("runs") == 1 and o["status"]["phase"] == "Recovering" and o,
                     timeout=90, what="the first scheduled run (a bare pod is never replaced: it stays Recovering)")
    assert first["status"]["lastScheduleTime"] == due and first["status"]["nextRunAt"] > due
    second = wait_for(lambda: (o := cluster.get("chaosexperiment", "every-minute", lab))
                      and o["status"].get("runs") == 2 and o, timeout=90, what="the second run replacing the first")
    assert second["status"]["lastScheduleTime"] == first["status"]["nextRunAt"]
    assert second["status"]["plannedTargets"] != first["status"]["plannedTargets"]  # the first one's pod is gone
    reasons = cluster.kubectl("get", "events", "-n", lab, "--field-selector",
                              "involvedObject.name=every-minute", "-o", "jsonpath={.items[*].reason}").stdout.split()
    assert "Replaced" in reasons, reasons
    cluster.kubectl("delete", "chaosexperiment", "every-minute", "-n", lab)


def test_an_experiment_deleted_while_the_operator_is_down_is_cleaned_up_when_it_returns(cluster, lab, operator):
    _shard_with_pods(cluster, lab)
    cluster.apply(_switchover("orphan", lab))
    settled(cluster, "orphan", lab, phases=("Recovering",))
    operator.stop()
    try:
        cluster.kubectl("delete", "chaosexperiment", "orphan", "-n", lab, "--wait=false")
        time.sleep(2)
        held = cluster.get("chaosexperiment", "orphan", lab)
        assert held and held["metadata"].get("deletionTimestamp"), "the finalizer holds it while nobody cleans up"
        assert _annotations(cluster, lab)["pim-sre.lab/switchover-to"] == "shard-00-1"
    finally:
        operator.start()
    wait_for(lambda: cluster.get("chaosexperiment", "orphan", lab) is None, timeout=60,
             what="the restarted operator to clean up and release the experiment")
    assert "pim-sre.lab/switchover-to" not in _annotations(cluster, lab)


class _Health(BaseHTTPRequestHandler):
    status = 200

    def do_GET(self):  # noqa: N802 - the stdlib's name
        self.send_response(type(self).status)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_a_failing_probe_aborts_a_running_experiment(cluster, lab):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/healthz"
        cluster.apply(experiment("probed", lab, probes=[{"name": "gateway", "url": url, "failureThreshold": 2}]))
        running = settled(cluster, "probed", lab, phases=("Recovering",))  # a bare pod is never replaced
        assert running["status"]["probes"] == [{"name": "gateway", "consecutiveFailures": 0}]
        _Health.status = 503
        aborted = settled(cluster, "probed", lab, phases=("Aborted",), timeout=40)
        assert condition(aborted, "Degraded")["reason"] == "ProbeFailed"
        assert "probe gateway failed 2 time(s) in a row" in aborted["status"]["abortReason"]
        assert "HTTP 503" in aborted["status"]["abortReason"]
    finally:
        _Health.status = 200
        server.shutdown()


def test_a_network_fault_ends_with_its_duration_and_its_chaos_mesh_object_is_removed(cluster, lab):
    cluster.apply(experiment("short-delay", lab, action="networkDelay", duration="5s",
                             parameters={"latency": "100ms", "jitter": "10ms"}))
    running = settled(cluster, "short-delay", lab, phases=("Recovering", "Completed"))
    (generated,) = running["status"]["generatedObjects"]
    # the operator records CleanedUp, then releases its finalizer: wait for the last of the two
    done = wait_for(lambda: (o := cluster.get("chaosexperiment", "short-delay", lab))
                    and "pim-sre.lab/chaos-cleanup" not in (o["metadata"].get("finalizers") or [])
                    and o["status"]["timeline"][-1]["event"] == "CleanedUp" and o, timeout=40,
                    what="the fault's end, its cleanup and the finalizer released")
    assert done["status"]["phase"] == "Completed" and done["status"]["verdict"] == "Passed"
    assert f"NetworkChaos/{generated['name']}" in done["status"]["timeline"][-1]["detail"]
    assert cluster.get("networkchaos", generated["name"], lab) is None


class _Recorder(BaseHTTPRequestHandler):
    """Where Grafana would be (it cannot run here): records each annotation POSTed to it."""

    received: list[tuple[str, str, dict]] = []

    def do_POST(self):  # noqa: N802 - the http.server name
        import json
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).received.append((self.path, self.headers.get("Authorization", ""), body))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"message": "Annotation added", "id": 1}')

    def log_message(self, *args):
        pass


def test_a_real_run_is_annotated_in_the_grafana_its_lab_names_start_and_span(cluster, lab, operator):
    """Last in this module: the Lab it applies stays in the namespace."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    token = "grafana-sa-token-not-for-logs"
    try:
        cluster.apply([
            {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "grafana-token", "namespace": lab},
             "stringData": {"token": token}},
            {"apiVersion": "pim-sre.lab/v1alpha1", "kind": "Lab", "metadata": {"name": "annotated", "namespace": lab},
             "spec": {"image": "ghcr.io/pim-sre/lab:0.1.0", "observability": {"grafana": {
                 "url": f"http://127.0.0.1:{server.server_port}",
                 "apiTokenSecretRef": {"name": "grafana-token", "key": "token"}}}}},
        ])
        cluster.apply(experiment("annotated-delay", lab, action="networkDelay", duration="5s",
                                 parameters={"latency": "100ms"}))
        wait_for(lambda: len(_Recorder.received) >= 2, timeout=60, what="the start and end annotations")
        (start_path, auth, start), (_, _, end) = _Recorder.received[:2]
        assert start_path == "/api/annotations" and auth == f"Bearer {token}"
        assert {"pim-sre.lab/chaos", "experiment:annotated-delay", "action:networkDelay"} <= set(start["tags"])
        assert "ADR-011" in start["text"] and "timeEnd" not in start
        assert "verdict:Passed" in end["tags"] and end["timeEnd"] >= end["time"] == start["time"]
        assert "Completed" in end["text"]
        assert token not in operator.log.read_text()
    finally:
        server.shutdown()

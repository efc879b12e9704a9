"""ChaosExperiments against the real-node sample lab (`sample_documents(real_node=True)`: the
Lab's services and PostgreSQL Shards running the project's image on a real kubelet): a podKill
deletes exactly one real pod and its replacement's readiness is timed; a containerKill SIGKILLs
the main process of one container through containerd, the same pod restarts it and the time to
Ready is recorded; a podKill of an encounter pod while clients book across the three shards
leaves every acknowledged booking readable; an sqlFailover asks shard-00's failover manager for a switchover, the Shard
records it, the `-primary` Service takes a write on the new primary and no committed row is
lost. Without a real node (kwok nodes run nothing) the module skips, saying so."""

from __future__ import annotations

import base64
import json
from collections import Counter

import psycopg
import pytest

from failover_lab import FailoverLab, Writers
from pimlab.waiting import wait_for
from test_chaos_experiments import KILL_SWITCH, OPT_IN, condition, experiment, settled

PATIENT = {"app.kubernetes.io/instance": "pim", "app.kubernetes.io/component": "patient"}


def pods(cluster, namespace: str, labels: dict) -> dict[str, dict]:
    selector = ",".join(f"{k}={v}" for k, v in labels.items())
    items = json.loads(cluster.kubectl("get", "pods", "-n", namespace, "-l", selector, "-o", "json").stdout)["items"]
    return {p["metadata"]["name"]: p for p in items if not p["metadata"].get("deletionTimestamp")}


def restarts(pod: dict) -> int:
    return sum(s.get("restartCount", 0) for s in pod["status"].get("containerStatuses") or [])


def _drill(name: str, namespace: str, **spec) -> dict:
    return experiment(name, namespace, **{"duration": "3m", "target": {"selector": {"matchLabels": PATIENT}, "mode": "one"},
                                          "blastRadius": {"maxPods": 1, "maxPercent": 100}, **spec})


@pytest.fixture(scope="module")
def lab(real_sample_lab):
    """The run's real-node sample lab (tests/cluster/conftest.py), opted in to chaos."""
    return real_sample_lab.namespace


@pytest.fixture(scope="module")
def operator_namespace(real_sample_lab):
    """Where the lab's operator reads its kill switch."""
    return real_sample_lab.operator_namespace


def test_governance_on_the_real_lab_dry_run_blast_radius_opt_in_kill_switch_and_deletion(cluster, lab,
                                                                                          operator_namespace):
    services = {"app.kubernetes.io/instance": "pim"}
    before = {n: p["metadata"]["uid"] for n, p in pods(cluster, lab, services).items()}
    cluster.apply(_drill("real-preview", lab, dryRun=True))
    preview = settled(cluster, "real-preview", lab)
    assert preview["status"]["phase"] == "DryRun" and len(preview["status"]["plannedTargets"]) == 1
    cluster.apply(experiment("real-too-wide", lab, target={"selector": {"matchLabels": services}, "mode": "all"},
                             blastRadius={"maxPods": 1, "maxPercent": 100}))
    assert condition(settled(cluster, "real-too-wide", lab))["reason"] == "BlastRadiusExceeded"
    cluster.kubectl("label", "namespace", lab, "pim-sre.lab/chaos-")
    try:
        cluster.apply(_drill("real-not-opted-in", lab))
        assert condition(settled(cluster, "real-not-opted-in", lab))["reason"] == "NamespaceNotOptedIn"
    finally:
        cluster.kubectl("label", "namespace", lab, OPT_IN, "--overwrite")
    assert {n: p["metadata"]["uid"] for n, p in pods(cluster, lab, services).items()} == before, "a refused run changed a pod"

    delay = {"action": "networkDelay", "parameters": {"latency": "50ms"}, "duration": "10m"}
    cluster.apply([_drill("real-delay-deleted", lab, **delay), _drill("real-delay-paused", lab, **delay)])
    generated = {name: settled(cluster, name, lab, phases=("Recovering",))["status"]["generatedObjects"][0]["name"]
                 for name in ("real-delay-deleted", "real-delay-paused")}
    cluster.kubectl("delete", "chaosexperiment", "real-delay-deleted", "-n", lab, "--wait=false")
    wait_for(lambda: cluster.get("chaosexperiment", "real-delay-deleted", lab) is None, timeout=30,
             what="the deleted experiment gone (its finalizer released after cleanup)")
    assert cluster.get("networkchaos", generated["real-delay-deleted"], lab) is None
    cluster.kubectl("annotate", "namespace", operator_namespace, f"{KILL_SWITCH}=true", "--overwrite")
    try:
        aborted = settled(cluster, "real-delay-paused", lab, phases=("Aborted",), timeout=30)
        assert condition(aborted, "Degraded")["reason"] == "KillSwitchEngaged"
        wait_for(lambda: cluster.get("networkchaos", generated["real-delay-paused"], lab) is None, timeout=30,
                 what="the paused experiment's NetworkChaos removed")
    finally:
        cluster.kubectl("annotate", "namespace", operator_namespace, f"{KILL_SWITCH}-", check=False)


def test_pod_kill_replaces_exactly_one_real_pod_and_times_its_readiness(cluster, lab):
    before = pods(cluster, lab, PATIENT)
    cluster.apply(_drill("real-pod-kill", lab))
    obj = settled(cluster, "real-pod-kill", lab, phases=("Completed", "Aborted", "Failed"), timeout=180)
    status = obj["status"]
    assert status["verdict"] == "Passed", status
    (killed,) = status["plannedTargets"]
    after = pods(cluster, lab, PATIENT)
    assert killed in before and killed not in after and len(after) == len(before)
    assert {n: p["metadata"]["uid"] for n, p in after.items() if n in before} == \
        {n: p["metadata"]["uid"] for n, p in before.items() if n != killed}, "only the planned pod was killed"
    assert 0 < status["recoverySeconds"] < 180
    assert [e["event"] for e in status["timeline"]][-2:] == ["Injected", "Recovered"]
    print(f"podKill of {killed}: replacement Ready {status['recoverySeconds']} s after the kill")


def test_container_kill_restarts_the_same_pod_and_times_it(cluster, lab):
    before = pods(cluster, lab, PATIENT)
    cluster.apply(_drill("real-container-kill", lab, action="containerKill"))
    obj = settled(cluster, "real-container-kill", lab, phases=("Completed", "Aborted", "Failed"), timeout=180)
    status = obj["status"]
    assert status["verdict"] == "Passed", (status, condition(obj))
    (target,) = status["affectedTargets"]
    after = pods(cluster, lab, PATIENT)
    assert after[target]["metadata"]["uid"] == before[target]["metadata"]["uid"], "the same pod, not a new one"
    assert restarts(after[target]) == restarts(before[target]) + 1
    terminated = after[target]["status"]["containerStatuses"][0]["lastState"]["terminated"]
    assert terminated["exitCode"] == 137 or terminated.get("signal") == 9, terminated  # SIGKILL
    assert 0 < status["recoverySeconds"] < 180
    injected = next(e for e in status["timeline"] if e["event"] == "Injected")
    assert "SIGKILL" in injected["detail"] and "containerd" in injected["detail"]
    print(f"containerKill of {target}: exit {terminated['exitCode']}, Ready again {status['recoverySeconds']} s later")


def test_pod_kill_of_an_encounter_pod_under_load_loses_no_acknowledged_booking(cluster, lab, tmp_path):
    """The sample lab's three shards: clients book through the gateway for patients spread over
    them while a podKill takes one encounter pod; every acknowledged booking is readable through
    the API afterwards, on whichever shard it landed."""
    client = FailoverLab(cluster, lab, tmp_path)
    client.connect(patients=6)
    before = client.service_pods("encounter")
    with Writers(client) as writers:
        writers.wait_acks()
        cluster.apply(experiment("real-encounter-kill", lab, duration="3m", blastRadius={"maxPods": 1, "maxPercent": 100},
                                 target={"selector": {"matchLabels": client.service_labels("encounter")}, "mode": "one"}))
        status = settled(cluster, "real-encounter-kill", lab, phases=("Completed", "Aborted", "Failed"),
                         timeout=180)["status"]
        writers.wait_acks()
    assert status["verdict"] == "Passed", status
    (killed,) = status["plannedTargets"]
    assert killed in before and killed not in client.service_pods("encounter")
    codes = Counter(r.status for r in writers.results)
    assert set(codes) <= {202, 502, 503, 0} and codes[202] > 10, codes
    unreadable = client.unreadable(writers.acknowledged())
    assert not unreadable, f"{len(unreadable)} of {len(writers.acknowledged())} acknowledged bookings not readable: " \
                           f"{sorted(unreadable.items())[:5]}"
    print(f"podKill of {killed} under load on three shards: {dict(codes)}; all {codes[202]} bookings readable")


def _primary_connection(cluster, namespace: str) -> psycopg.Connection:
    service = cluster.get("service", "shard-00-primary", namespace)
    secret = cluster.get("secret", "shard-00-credentials", namespace)
    data = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    return psycopg.connect(host=service["spec"]["clusterIP"], port=service["spec"]["ports"][0]["port"], dbname="pim",
                           user=data["username"], password=data["password"], connect_timeout=5, autocommit=True)


def test_sql_failover_switches_over_records_it_on_both_objects_and_loses_nothing(cluster, lab):
    shard = cluster.get("shard", "shard-00", lab)
    old_primary = shard["status"]["currentPrimary"]
    history = len(shard["status"].get("failoverHistory") or [])
    with _primary_connection(cluster, lab) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS chaos_acknowledged (n int PRIMARY KEY)")
        conn.execute("TRUNCATE chaos_acknowledged")
        for n in range(200):
            conn.execute("INSERT INTO chaos_acknowledged VALUES (%s)", (n,))  # each commit acknowledged
    cluster.apply(experiment("real-switchover", lab, action="sqlFailover", target={"shardRef": "shard-00"},
                             duration="3m", blastRadius={"maxPods": 1, "maxPercent": 34}))
    obj = settled(cluster, "real-switchover", lab, phases=("Completed", "Aborted", "Failed"), timeout=200)
    status = obj["status"]
    assert status["verdict"] == "Passed", (status, condition(obj))
    assert status["plannedTargets"] == [old_primary] and status["affectedTargets"][0] == old_primary
    new_primary = status["affectedTargets"][1]
    shard = cluster.get("shard", "shard-00", lab)
    record = shard["status"]["lastFailover"]
    assert (record["from"], record["to"], record["reason"]) == (old_primary, new_primary, "PlannedSwitchover")
    assert len(shard["status"]["failoverHistory"]) == history + 1 and shard["status"]["currentPrimary"] == new_primary
    events = [e["event"] for e in status["timeline"]]
    assert events[-3:] == ["Injected", "FailoverRecorded", "TargetRecovered"]
    assert 0 < status["recoverySeconds"] < 200
    # the operator records CleanedUp, then releases its finalizer: wait for the last of the two
    cleaned = wait_for(lambda: (o := cluster.get("chaosexperiment", "real-switchover", lab))
                       and "pim-sre.lab/chaos-cleanup" not in (o["metadata"].get("finalizers") or []) and o,
                       timeout=30, what="the switchover request removed and the finalizer released")
    assert cleaned["status"]["timeline"][-1]["event"] == "CleanedUp"
    assert "pim-sre.lab/switchover-to" not in (cluster.get("shard", "shard-00", lab)["metadata"].get("annotations") or {})
    with _primary_connection(cluster, lab) as conn:
        assert not conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]
        assert conn.execute("SELECT count(*), min(n), max(n) FROM chaos_acknowledged").fetchone() == (200, 0, 199)
    print(f"sqlFailover {old_primary} -> {new_primary}: Shard's switchover {record['durationSeconds']} s, "
          f"-primary Service took a write {status['recoverySeconds']} s after the request; 200/200 rows kept")

"""Shard high availability proven on the real node, with Debian's PostgreSQL in the project's
image: a 3-replica Shard (one primary, two synchronous standbys, `ANY 1`) behind the Lab's
services, while clients book encounters through the gateway.

One lab for the whole module (tests/cluster/failover_lab.py); the cases run in file order and
each leaves the shard Ready again. kwok nodes run nothing, so without a real node this module
skips, saying so."""

from __future__ import annotations

import json
import time
from collections import Counter
from datetime import datetime

import pytest
from failover_lab import PODS, SHARD, UNHEALTHY_AFTER, FailoverLab, Writers, condition
from operator_process import operator_process
from test_chaos_experiments import OPT_IN, experiment, settled

from pimlab.waiting import wait_for

#: a failover's detection is `unhealthyAfterSeconds`; the rest (one 2 s pass to notice, fencing,
#: promotion, the probe write) must fit in this, on a 2-core machine shared with other work
SLACK = 12


@pytest.fixture(scope="module")
def operator(cluster, crds_installed, tmp_path_factory):
    if not cluster.plane.real_node:
        pytest.skip(f"no real node in this cluster (node mode: {cluster.plane.node_mode()}): PostgreSQL pods "
                    "would not run on kwok nodes, so there is nothing to fail over")
    with operator_process(cluster, tmp_path_factory, "ha") as process:
        yield process


@pytest.fixture(scope="module")
def lab(cluster, operator, tmp_path_factory):
    lab = FailoverLab(cluster, operator.namespace, tmp_path_factory.mktemp("failover-lab"), operator.log)
    try:
        lab.up()
        yield lab
    finally:
        lab.down()


def check_writes(lab: FailoverLab, writers: Writers, primary: str) -> None:
    """Only 202 or 503-with-Retry-After answers; every acknowledged booking on the primary; the
    audit chain verifies."""
    codes = Counter(r.status for r in writers.results)
    assert set(codes) <= {202, 503}, f"answers other than 202/503: {codes}"
    assert all(r.retry_after for r in writers.results if r.status == 503), "a 503 without Retry-After"
    lost = writers.acknowledged() - lab.stored(primary)
    assert not lost, f"{len(lost)} of {len(writers.acknowledged())} acknowledged bookings missing on {primary}"
    report = lab.audit_verify()
    assert report["ok"], report


def fail_over(lab: FailoverLab, fault) -> None:
    """`fault` on the primary under write load: a promotion within unhealthyAfterSeconds plus
    SLACK, recorded with its duration; the old primary back as a standby; nothing lost."""
    f = lab.fail_over(fault)
    last = f.record
    assert last["from"] == f.old and last["to"] == f.new != f.old, last
    assert last["reason"] == "PrimaryUnhealthy" and not last.get("dataLoss"), last
    assert 0 < last["durationSeconds"] <= last["outageSeconds"] <= UNHEALTHY_AFTER + SLACK, \
        f"{last}; the operator's passes:\n" + "\n".join(lab.passes(last["primaryLostAt"]))
    assert UNHEALTHY_AFTER <= f.client_outage <= UNHEALTHY_AFTER + SLACK, \
        f"first acknowledged write {f.client_outage:.1f}s after the first failed one"
    roles = {r["pod"]: r["role"] for r in f.status["replicas"]}
    assert roles[f.old] == "secondary" and roles[f.new] == "primary", roles
    check_writes(lab, f.writers, f.new)
    events = lab.cluster.kubectl("get", "events", "-n", lab.namespace, "-o", "json").stdout
    reasons = {e["reason"] for e in json.loads(events)["items"]}
    assert {"Promoted", "FailoverCompleted"} <= reasons, reasons
    print(f"failover {f.old} -> {f.new}: first acknowledged write {f.client_outage:.2f}s after the first failed one; "
          f"status durationSeconds {last['durationSeconds']}, outageSeconds {last['outageSeconds']}")


def test_shard_is_ready_with_one_primary_and_two_synchronous_standbys(lab):
    # a standby shows async for a moment after it starts streaming: wait for both to be in the quorum
    status = wait_for(lambda: (s := lab.wait_ready()["status"]) and all(
        r.get("synchronizationState") == "streaming/quorum" for r in s["replicas"] if r["pod"] != s["currentPrimary"])
        and s, timeout=60, what="both standbys in the synchronous quorum")
    primary = status["currentPrimary"]
    assert primary in PODS and status["targetPrimary"] == primary
    standbys = [r for r in status["replicas"] if r["pod"] != primary]
    assert [r["role"] for r in standbys] == ["secondary", "secondary"]
    # from the primary's pg_stat_replication: both stream, both in the quorum (ANY 1 of the two)
    assert all(r["synchronousCommit"] and r["synchronizationState"] == "streaming/quorum" for r in standbys), standbys
    assert condition(lab.shard(), "Ready")["status"] == "True"


def test_deleting_the_primary_pod_promotes_a_standby_and_loses_nothing(lab):
    fail_over(lab, lambda pod: lab.cluster.kubectl("delete", "pod", pod, "-n", lab.namespace, "--wait=false"))


def test_kill_9_of_the_primary_postgres_promotes_a_standby_and_loses_nothing(lab):
    fail_over(lab, lab.kill9)


def test_killing_one_standby_does_not_interrupt_writes(lab):
    lab.wait_ready()
    with Writers(lab) as writers:
        writers.wait_acks()
        start = time.monotonic()
        lab.kill9(lab.standbys()[0])
        time.sleep(8)
        end = time.monotonic()
    during = writers.between(start, end)
    assert len(during) >= 10 and Counter(r.status for r in during) == {202: len(during)}, \
        Counter(r.status for r in during)
    lab.wait_ready()
    check_writes(lab, writers, lab.primary())


def test_every_standby_gone_writes_get_503_shard_degraded_then_recovers(lab):
    lab.wait_ready()
    primary = lab.primary()
    with Writers(lab) as writers:
        writers.wait_acks()
        with lab.standbys_frozen():
            start = time.monotonic()  # every write sent from now on waits for a standby that cannot answer
            degraded = wait_for(lambda: condition(s := lab.shard(), "Degraded").get("status") == "True" and s,
                                timeout=30, what="the Shard to report Degraded")
            # each such write is answered once the services' commit timeout (5 s) gives up on
            # the quorum: wait for some to be sent and answered while the standbys are frozen
            during = wait_for(lambda: len(d := writers.between(start, time.monotonic())) >= 3 and d, timeout=60,
                              what="three writes sent and answered while every standby is frozen")
        lab.wait_ready(timeout=120)
        writers.wait_acks()
    assert {r.status for r in during} == {503}, Counter(r.status for r in during)
    assert degraded["status"]["phase"] == "Degraded" and degraded["status"]["currentPrimary"] == primary
    assert lab.primary() == primary  # no failover: the primary never stopped
    check_writes(lab, writers, primary)


def test_no_safe_standby_refuses_promotion_with_a_reason_then_fails_over_when_one_returns(lab):
    lab.wait_ready()
    old = lab.primary()
    with Writers(lab) as writers:
        writers.wait_acks()
        with lab.standbys_frozen():
            lab.kill9(old)
            refused = wait_for(lambda: (c := condition(lab.shard(), "Degraded")).get("reason") in (
                "NoSafeStandby", "QuorumNotObserved") and c, timeout=UNHEALTHY_AFTER + 40, what="a refusal")
            assert refused["status"] == "True" and "refusing to promote" in refused["message"], refused
            assert lab.primary() == old  # nobody was promoted
        wait_for(lambda: lab.primary() not in (None, old), timeout=60, what="a promotion once the standbys answer")
        lab.wait_ready(timeout=180)
        writers.wait_acks()
    check_writes(lab, writers, lab.primary())


def test_planned_switchover_loses_nothing(lab):
    lab.wait_ready()
    old = lab.primary()
    target = lab.standbys()[-1]
    restarts_before = lab.restarts()
    with Writers(lab) as writers:
        writers.wait_acks()
        lab.cluster.kubectl("patch", "shard", SHARD, "-n", lab.namespace, "--type=merge",
                            "-p", json.dumps({"spec": {"primary": target}}))
        wait_for(lambda: lab.primary() == target, timeout=60, what=f"the switchover to {target}")
        lab.wait_ready(timeout=180)
        writers.wait_acks()
    last = lab.shard()["status"]["lastFailover"]
    lab.cluster.kubectl("patch", "shard", SHARD, "-n", lab.namespace, "--type=json",
                        "-p", json.dumps([{"op": "remove", "path": "/spec/primary"}]))
    assert (last["from"], last["to"], last["reason"], last["planned"]) == (old, target, "PlannedSwitchover", True), last
    assert lab.restarts() == restarts_before, "the switchover restarted a pod"
    check_writes(lab, writers, target)


def _parse(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def test_a_rolling_update_restarts_the_standbys_then_switches_over_and_loses_nothing(lab):
    """A changed pod template (here the memory limit) rolls out as shard/rollout.py says: each
    standby in turn, a planned switchover to an updated standby, then the old primary, restarted
    as a standby. The primary is never restarted in place, so no unplanned failover happens."""
    status = lab.wait_ready()["status"]
    old, history = status["currentPrimary"], len(status.get("failoverHistory") or [])
    before = lab.restarts()
    revision = lab.cluster.get("statefulset", SHARD, lab.namespace)["status"]["updateRevision"]
    resources = lab.shard()["spec"]["resources"]
    limit = "640Mi" if resources["limits"]["memory"] != "640Mi" else "512Mi"
    with Writers(lab) as writers:
        writers.wait_acks()
        patched = time.monotonic()
        lab.cluster.kubectl("patch", "shard", SHARD, "-n", lab.namespace, "--type=merge", "-p",
                            json.dumps({"spec": {"resources": {**resources, "limits": {"memory": limit}}}}))
        done = wait_for(lambda: (s := lab.shard()["status"]) and (r := s.get("rollingUpdate") or {})
                        and r.get("revision") not in (None, revision) and r["reason"] == "UpToDate"
                        and lab.healthy() and s, timeout=300, interval=2, what="the rolling update to finish")
        writers.wait_acks()
    pods = {name: lab.cluster.get("pod", name, lab.namespace) for name in PODS}
    assert all(p["metadata"]["uid"] != before[name][0] for name, p in pods.items()), "a pod was not replaced"
    assert all(p["metadata"]["labels"]["controller-revision-hash"] == done["rollingUpdate"]["revision"]
               and p["spec"]["containers"][0]["resources"]["limits"]["memory"] == limit for p in pods.values())
    record = done["lastFailover"]
    assert len(done["failoverHistory"]) == history + 1, done["failoverHistory"][history:]
    assert (record["from"], record["reason"], record["planned"]) == (old, "PlannedSwitchover", True), record
    new = record["to"]
    assert done["currentPrimary"] == new != old
    # the standbys were replaced before the switchover started, the old primary after
    switched = _parse(record["startedAt"])
    for name, pod in pods.items():
        created = _parse(pod["metadata"]["creationTimestamp"])
        assert (created <= switched) if name != old else (created >= switched.replace(microsecond=0)), \
            (name, pod["metadata"]["creationTimestamp"], record)
    events = json.loads(lab.cluster.kubectl("get", "events", "-n", lab.namespace, "-o", "json").stdout)["items"]
    said = [e["message"] for e in events if e["reason"] in ("RollingUpdate", "RollingUpdateCompleted")
            and e["involvedObject"]["name"] == SHARD]
    assert sum(m.startswith("restarting standby") for m in said) == 3 and \
        any(m.startswith("every standby runs revision") for m in said), said
    outage = writers.outage_after(patched)
    assert outage is None or outage < UNHEALTHY_AFTER + SLACK, outage
    check_writes(lab, writers, new)
    print(f"rolling update {revision} -> {done['rollingUpdate']['revision']}: switchover {old} -> {new} in "
          f"{record['durationSeconds']} s; longest write outage {outage or 0:.2f} s; "
          f"{len(writers.acknowledged())} bookings acknowledged, none lost")


def test_a_pod_kill_of_the_encounter_service_under_load_loses_no_acknowledged_booking(lab):
    """The chaos issue's podKill under load: a ChaosExperiment kills the one encounter pod while
    clients book through the gateway. Writes fail while no encounter pod serves (502/503/no
    answer), the replacement's readiness is timed, and every booking acknowledged before, during
    and after is stored on the primary and readable through the API."""
    lab.wait_ready()
    lab.cluster.kubectl("label", "namespace", lab.namespace, OPT_IN, "--overwrite")
    before = lab.service_pods("encounter")
    with Writers(lab) as writers:
        writers.wait_acks()
        lab.cluster.apply(experiment("encounter-pod-kill", lab.namespace, duration="3m",
                                     target={"selector": {"matchLabels": lab.service_labels("encounter")}, "mode": "one"},
                                     blastRadius={"maxPods": 1, "maxPercent": 100}))
        status = settled(lab.cluster, "encounter-pod-kill", lab.namespace, phases=("Completed", "Aborted", "Failed"),
                         timeout=180)["status"]
        writers.wait_acks()
    assert status["verdict"] == "Passed" and 0 < status["recoverySeconds"] < 180, status
    after = lab.service_pods("encounter")
    assert status["plannedTargets"] == list(before) and not set(before) & set(after) and len(after) == 1
    codes = Counter(r.status for r in writers.results)
    assert set(codes) <= {202, 502, 503, 0}, codes
    assert codes[202] > 10 and set(codes) != {202}, f"the kill interrupted nothing: {codes}"
    lost = writers.acknowledged() - lab.stored(lab.primary())
    assert not lost, f"{len(lost)} of {len(writers.acknowledged())} acknowledged bookings missing on the primary"
    unreadable = lab.unreadable(writers.acknowledged())
    assert not unreadable, f"{len(unreadable)} of {len(writers.acknowledged())} acknowledged bookings not readable " \
                           f"through the API: {sorted(unreadable.items())[:5]}"
    print(f"podKill of {before[0]} under load: {codes}; replacement Ready after {status['recoverySeconds']} s")


def test_the_generated_password_appears_nowhere_outside_its_secret(lab, operator):
    password = lab.password()
    assert len(password) >= 16
    places = lab.places_showing(password, operator.log)
    assert places == [], f"the generated password shows in: {places}"

"""The PostgreSQL path for real: Debian's PostgreSQL 15 on loopback, one `pimlab instance run`
per replica, the operator's failover manager deciding. No mocks: kill -9, pg_promote, pg_rewind.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import pytest
from pg_local import LocalShard, Writer, available

from pimlab_operator.shard.failover import Policy

pytestmark = pytest.mark.skipif(available() is not None, reason=available() or "")

POLICY = Policy(unhealthy_after_seconds=5, synchronous_required=1)
FIGURES = Path(__file__).resolve().parents[2] / ".lab" / "failover-figures.json"


def ready(result) -> bool:
    return result.decision.phase == "Ready" and not result.errors


@pytest.fixture
def shard():
    s = LocalShard(replicas=3, synchronous=1)
    try:
        for pod in s.members:
            s.start(pod)
        s.converge(POLICY, ready, timeout=90)
        yield s
    finally:
        s.close()


def ids_on(shard: LocalShard, pod: str) -> set[int]:
    with shard.connect(pod) as conn:
        return {row[0] for row in conn.execute("SELECT id FROM acked")}


def test_primary_and_two_quorum_standbys_and_a_commit_needs_two_nodes(shard):
    primary = shard.primary()
    assert primary == "shard-00-0"
    # a walsender takes its quorum priority when it sees the reloaded synchronous_standby_names,
    # so a standby can show `async` for a moment after the shard turned Ready
    expected = [("shard-00-1", "quorum", "streaming"), ("shard-00-2", "quorum", "streaming")]
    deadline = time.monotonic() + 15
    while True:
        status = shard.driver.status(primary)
        states = sorted((r["name"], r["syncState"], r["state"]) for r in status["replication"])
        if states == expected or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert status["synchronousStandbyNames"] == 'ANY 1 ("shard-00-1", "shard-00-2")'
    assert states == expected
    assert shard.driver.write_probe(primary)
    # both standbys stopped: the primary alone cannot acknowledge a commit
    shard.driver.fence("shard-00-1")
    shard.driver.fence("shard-00-2")
    probe = shard.driver._post(primary, "/write-probe")
    assert probe["acknowledged"] is False and probe["error"] == "SynchronousReplicationTimeout"
    # one standby back: acknowledged again, and the write is on that standby too
    shard.driver.follow("shard-00-1", primary)
    assert shard.driver.write_probe(primary)
    with shard.connect(primary) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS acked (id bigint PRIMARY KEY, at timestamptz NOT NULL)")
        conn.execute("INSERT INTO acked VALUES (42, now())")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and 42 not in ids_on(shard, "shard-00-1"):
        time.sleep(0.1)
    assert 42 in ids_on(shard, "shard-00-1")
    # the password is in the credentials files and the 0600 passfiles, and nowhere else
    for path in shard.root.rglob("*"):
        if path.is_file() and path.parent.name != "credentials" and path.name != "pgpass" \
                and "pgdata" not in path.parts:
            assert shard.password not in path.read_text(errors="replace"), path
    for pod in shard.members:
        assert shard.password not in json.dumps(shard.driver.status(pod))
    assert not [c for c in _cmdlines() if shard.password.encode() in c], "a password on a command line"


def _cmdlines() -> list[bytes]:
    out = []
    for path in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            out.append(path.read_bytes())
        except OSError:
            pass
    return out


@pytest.mark.timeout(900)
def test_kill9_of_the_primary_promotes_the_most_advanced_standby_and_loses_nothing(shard):
    """Five failovers in a row under continuous writes; figures written to .lab/failover-figures.json."""
    outages, manager_view = [], []
    with Writer(shard) as writer:
        time.sleep(1)
        for run in range(5):
            old = shard.primary()
            before = len(shard.failovers)
            assert writer.acked, "the writer acknowledged nothing before the kill"
            shard.kill9(old)
            t_kill = time.monotonic()  # the postmaster is gone: the primary is lost from here
            shard.converge(POLICY, lambda r: len(shard.failovers) > before, timeout=60, interval=0.25)
            record = shard.failovers[-1]
            new = record.to
            assert record.from_ == old and new != old and record.reason == "PrimaryUnhealthy"
            deadline = time.monotonic() + 15
            while writer.first_ack_after(t_kill) is None and time.monotonic() < deadline:
                time.sleep(0.05)
            first = writer.first_ack_after(t_kill)
            assert first is not None, "no write acknowledged after the failover"
            outages.append(first - t_kill)
            manager_view.append(record.outage_seconds)
            # the old primary returns and is rewound onto the new one
            shard.start(old)
            shard.converge(POLICY, ready, timeout=90)
            assert shard.driver.status(old)["start"] == "rewind"
            assert shard.labels[old] == "secondary" and shard.primary() == new
    acked = {i for i, _ in writer.acked}
    assert acked and acked <= ids_on(shard, shard.primary()), "an acknowledged write was lost"
    assert sum(1 for pod, role in shard.labels.items() if role == "primary") == 1
    for pod in shard.members:  # re-pointed with the address the operator gave: no name lookup
        if pod != shard.primary():
            with shard.connect(pod) as conn:
                assert "hostaddr=127.0.0.1 " in conn.execute("SHOW primary_conninfo").fetchone()[0]
    assert any(e.reason == "Promoted" for e in shard.events) and any(e.reason == "Fencing" for e in shard.events)
    figures = {"runs": len(outages), "unhealthyAfterSeconds": POLICY.unhealthy_after_seconds,
               "clientOutageSeconds": [round(x, 3) for x in outages],
               "median": round(statistics.median(outages), 3), "max": round(max(outages), 3),
               "afterThresholdMedian": round(statistics.median(outages) - POLICY.unhealthy_after_seconds, 3),
               "managerOutageSeconds": manager_view, "acknowledgedWrites": len(acked), "failedAttempts": writer.failed}
    FIGURES.parent.mkdir(exist_ok=True)
    FIGURES.write_text(json.dumps(figures, indent=2) + "\n")
    print("failover figures:", json.dumps(figures))


def test_no_safe_standby_is_refused_with_a_reason_until_the_quorum_answers(shard):
    shard.kill9("shard-00-0")
    shard.kill9("shard-00-2")
    result = shard.converge(POLICY, lambda r: r.decision.refused, timeout=30)
    assert result.decision.reason == "QuorumNotObserved" and "allowDataLoss" in result.decision.message
    assert shard.driver.status("shard-00-1")["role"] == "standby"  # never promoted
    assert any(e.reason == "FailoverRefused" for e in shard.events)
    shard.start("shard-00-2")  # the quorum answers again: the failover goes on, safely
    shard.converge(POLICY, lambda r: bool(shard.failovers), timeout=60)
    assert shard.failovers[-1].to in ("shard-00-1", "shard-00-2")


def test_planned_switchover_loses_nothing(shard):
    with Writer(shard) as writer:
        time.sleep(1)
        policy = Policy(unhealthy_after_seconds=5, planned_primary="shard-00-2")
        shard.converge(policy, lambda r: bool(shard.failovers), timeout=60, interval=0.25)
        shard.converge(policy, ready, timeout=60)
        time.sleep(1)
    record = shard.failovers[-1]
    assert record.reason == "PlannedSwitchover" and record.planned and record.to == "shard-00-2"
    assert shard.primary() == "shard-00-2" and shard.labels["shard-00-0"] == "secondary"
    acked = {i for i, _ in writer.acked}
    assert acked <= ids_on(shard, "shard-00-2")


def test_a_crashed_postgres_under_a_living_manager_comes_back_as_standby(shard):
    shard.kill9("shard-00-0", manager=False)   # only postgres dies; the manager restarts it safely
    shard.converge(POLICY, lambda r: bool(shard.failovers), timeout=60)
    shard.converge(POLICY, ready, timeout=60)
    assert shard.primary() != "shard-00-0" and shard.labels["shard-00-0"] == "secondary"
    assert shard.driver.status("shard-00-0")["role"] == "standby"


def test_killing_one_standby_does_not_interrupt_writes(shard):
    with Writer(shard) as writer:
        time.sleep(1)
        before_failed = writer.failed
        shard.kill9("shard-00-2")
        t_kill = time.monotonic()
        time.sleep(3)
        result = shard.step(POLICY)
    assert writer.failed == before_failed, "a write failed while one quorum standby was down"
    assert writer.first_ack_after(t_kill + 2.5) is not None
    assert result.decision.phase == "Degraded" and result.decision.reason == "StandbysNotStreaming"
    assert shard.primary() == "shard-00-0" and not shard.failovers

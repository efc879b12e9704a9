"""The operator's metrics as Prometheus reads them: scraped over HTTP from the operator's
metrics server (`metrics.serve`) in a process of its own, fed by the same functions the Shard
and ChaosExperiment steps call after they write status, so that an operator restart is a
real one (a new process, with nothing but the objects' status to go by)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from pimlab_operator import metrics
from pimlab_operator.chaos import status as chaos_status
from pimlab_operator.shard import status as shard_status
from pimlab_operator.shard.model import FailoverRecord, ShardStatus

ROOT = Path(__file__).resolve().parents[2]
NAMESPACE = "lab"
T0 = datetime(2026, 12, 8, 1, 0, tzinfo=timezone.utc)

#: The operator's metrics server and the calls its steps make after each status write, one
#: JSON line per call on stdin, each answered `done` once made.
OPERATOR = """
import json, sys
from pimlab_operator import metrics
from pimlab_operator.chaos import step as chaos
from pimlab_operator.shard import step as shard
from pimlab_operator.shard.model import ShardStatus

metrics.serve(int(sys.argv[1]), "127.0.0.1")
print("serving", flush=True)
for line in sys.stdin:
    call, *args = json.loads(line)
    if call == "shard-written":
        shard.observe_failovers(args[0], ShardStatus.model_validate(args[1]))
    elif call == "chaos-reconciled":
        chaos.export_active(args[0])
    elif call == "chaos-deleted":
        metrics.forget_chaos_experiment(*args)
    print("done", flush=True)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class OperatorMetrics:
    """One operator process's metrics: started, fed, scraped, killed."""

    def __init__(self) -> None:
        self.port = free_port()
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "operator")]))
        self.proc = subprocess.Popen([sys.executable, "-c", OPERATOR, str(self.port)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=env)
        assert self.proc.stdout.readline().strip() == "serving"

    def call(self, *call) -> None:
        self.proc.stdin.write(json.dumps(call, default=str) + "\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline().strip() == "done"

    def scrape(self) -> dict[tuple[str, tuple], float]:
        """{(sample name, sorted labels): value} of /metrics as Prometheus reads it."""
        resp = httpx.get(f"http://127.0.0.1:{self.port}/metrics", timeout=5)
        assert resp.status_code == 200
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(resp.text) for s in family.samples}

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)


@pytest.fixture
def operator_process():
    started: list[OperatorMetrics] = []

    def start() -> OperatorMetrics:
        started.append(OperatorMetrics())
        return started[-1]

    yield start
    for process in started:
        if process.proc.poll() is None:
            process.kill()


def record(from_: str, to: str, reason: str, started: datetime, seconds: float) -> FailoverRecord:
    done = started + timedelta(seconds=seconds)
    return FailoverRecord(from_=from_, to=to, reason=reason, planned=reason == "PlannedSwitchover",
                          primary_lost_at=started, started_at=started, completed_at=done,
                          duration_seconds=seconds, outage_seconds=seconds)


def shard_status_of(*records: FailoverRecord) -> ShardStatus:
    return ShardStatus(phase="Ready", current_primary=records[-1].to if records else "shard-01-0",
                       failover_count=len(records) or None, last_failover=records[-1] if records else None,
                       failover_history=list(records) or None)


def shard(status: ShardStatus) -> dict:
    """The Shard as a pass reads it before writing."""
    return {"apiVersion": "pim-sre.lab/v1alpha1", "kind": "Shard",
            "metadata": {"name": "shard-01", "namespace": NAMESPACE, "uid": "uid-shard-01"},
            "status": status.model_dump(mode="json", by_alias=True, exclude_none=True)}


def written(status: ShardStatus) -> dict:
    return status.model_dump(mode="json", by_alias=True, exclude_none=True)


def failovers(scraped: dict, reason: str, sample: str = "count", le: str | None = None) -> float | None:
    labels = {"namespace": NAMESPACE, "shard": "shard-01", "reason": reason}
    if le is not None:
        labels["le"] = le
    return scraped.get((f"sql_failover_duration_seconds_{sample}", tuple(sorted(labels.items()))))


def test_a_failover_is_observed_once_across_resyncs_and_an_operator_restart(operator_process):
    lost = record("shard-01-0", "shard-01-1", "PrimaryUnhealthy", T0, 4.2)
    first = operator_process()
    assert "sql_failover_duration_seconds" in httpx.get(f"http://127.0.0.1:{first.port}/metrics").text, \
        "declared (HELP/TYPE) before any failover, so dashboards' queries name a known metric"
    first.call("shard-written", shard(shard_status_of()), written(shard_status_of(lost)))  # the pass that completed it
    for _ in range(3):  # resyncs and timer passes: the record is in status already
        first.call("shard-written", shard(shard_status_of(lost)), written(shard_status_of(lost)))
    scraped = first.scrape()
    assert failovers(scraped, "PrimaryUnhealthy") == 1
    assert failovers(scraped, "PrimaryUnhealthy", "sum") == pytest.approx(4.2)
    assert failovers(scraped, "PrimaryUnhealthy", "bucket", "5.0") == 1
    assert failovers(scraped, "PrimaryUnhealthy", "bucket", "3.0") == 0

    first.kill()
    restarted = operator_process()
    restarted.call("shard-written", shard(shard_status_of(lost)), written(shard_status_of(lost)))
    assert failovers(restarted.scrape(), "PrimaryUnhealthy") is None, "a restarted operator counts it again"

    planned = record("shard-01-1", "shard-01-0", "PlannedSwitchover", T0 + timedelta(minutes=5), 0.8)
    restarted.call("shard-written", shard(shard_status_of(lost)), written(shard_status_of(lost, planned)))
    restarted.call("shard-written", shard(shard_status_of(lost, planned)), written(shard_status_of(lost, planned)))
    scraped = restarted.scrape()
    assert failovers(scraped, "PlannedSwitchover") == 1
    assert failovers(scraped, "PlannedSwitchover", "sum") == pytest.approx(0.8)
    assert failovers(scraped, "PrimaryUnhealthy") is None


def test_a_failover_completed_again_after_a_lost_status_write_is_the_same_failover():
    """A pass whose write was lost completes the failover again from status's failoverInProgress:
    the same primary replaced, the same start, a later completedAt."""
    first = record("shard-01-0", "shard-01-1", "PrimaryUnhealthy", T0, 4.2)
    again = record("shard-01-0", "shard-01-1", "PrimaryUnhealthy", T0, 6.0)
    assert shard_status.completed_since(shard_status_of(first), shard_status_of(again)) == []
    assert shard_status.completed_since(shard_status_of(), shard_status_of(first)) == [first]
    # the oldest record leaves the history when it is full: not a new failover either
    history = [record("shard-01-0", "shard-01-1", "PrimaryUnhealthy", T0 + timedelta(minutes=i), 1.0)
               for i in range(shard_status.HISTORY_LENGTH)]
    newest = record("shard-01-1", "shard-01-0", "PrimaryUnhealthy", T0 + timedelta(hours=1), 2.0)
    after = shard_status_of(*history[1:], newest)
    assert shard_status.completed_since(shard_status_of(*history), after) == [newest]


def experiment(phase: str | None, action: str = "podKill", finalizers: tuple[str, ...] = (),
               deleting: bool = False) -> dict:
    meta = {"name": "kill-a-primary", "namespace": NAMESPACE, "uid": "uid-x", "generation": 1,
            "finalizers": list(finalizers)}
    if deleting:
        meta["deletionTimestamp"] = "2026-12-08T01:00:00Z"
    return {"apiVersion": "pim-sre.lab/v1alpha1", "kind": "ChaosExperiment", "metadata": meta,
            "spec": {"action": action}, "status": {"phase": phase} if phase else {}}


def active(scraped: dict, action: str = "podKill") -> float | None:
    labels = (("action", action), ("experiment", "kill-a-primary"), ("namespace", NAMESPACE))
    return scraped.get(("chaos_experiment_active", labels))


def test_chaos_experiment_active_follows_the_run_and_survives_a_restart(operator_process):
    cleanup = "pim-sre.lab/chaos-cleanup"
    first = operator_process()
    first.call("chaos-reconciled", experiment(None))
    assert active(first.scrape()) == 0
    for phase in ("Running", "Recovering"):
        first.call("chaos-reconciled", experiment(phase))
        assert active(first.scrape()) == 1, phase
    first.call("chaos-reconciled", experiment("Completed"))
    assert active(first.scrape()) == 0

    # a Chaos Mesh fault is in flight until its objects are removed and the finalizer released
    first.call("chaos-reconciled", experiment("Completed", "networkDelay", (cleanup,)))
    scraped = first.scrape()
    assert active(scraped, "networkDelay") == 1
    assert active(scraped, "podKill") is None, "the spec's action changed: the old action's series goes"
    first.call("chaos-reconciled", experiment("Completed", "networkDelay"))
    assert active(first.scrape(), "networkDelay") == 0

    # killed mid-run: the new process says 1 from the object alone, on its first reconcile
    first.call("chaos-reconciled", experiment("Recovering", "networkDelay", (cleanup,)))
    first.kill()
    restarted = operator_process()
    restarted.call("chaos-reconciled", experiment("Recovering", "networkDelay", (cleanup,)))
    assert active(restarted.scrape(), "networkDelay") == 1

    # deleted mid-run: in flight until its cleanup releases the finalizer, then gone
    restarted.call("chaos-reconciled", experiment("Recovering", "networkDelay", (cleanup,), deleting=True))
    assert active(restarted.scrape(), "networkDelay") == 1
    restarted.call("chaos-reconciled", experiment("Recovering", "networkDelay", deleting=True))
    assert active(restarted.scrape(), "networkDelay") == 0
    restarted.call("chaos-deleted", NAMESPACE, "kill-a-primary")
    assert not [k for k in restarted.scrape() if k[0] == "chaos_experiment_active"]


def test_fault_active_reads_the_object_alone():
    assert [chaos_status.fault_active(experiment(p)) for p in ("Running", "Recovering", "Completed", "Aborted",
                                                               "DryRun", None)] == [True, True] + [False] * 4
    assert chaos_status.fault_active(experiment("Aborted", finalizers=("pim-sre.lab/chaos-cleanup",)))
    assert not chaos_status.fault_active(experiment("Recovering", deleting=True))


def phases(drill: str) -> dict[str, float]:
    return {phase: REGISTRY.get_sample_value("pimlab_drill_phase",
                                             {"namespace": NAMESPACE, "drill": drill, "phase": phase})
            for phase in metrics.DRILL_PHASES}


def test_drill_phase_is_one_for_the_current_phase_and_zero_for_the_others():
    server = metrics.serve(free_port(), "127.0.0.1")
    try:
        metrics.drill_phase(NAMESPACE, "primary-loss-under-load", "Baseline")
        assert phases("primary-loss-under-load") == {p: float(p == "Baseline") for p in metrics.DRILL_PHASES}
        metrics.drill_phase(NAMESPACE, "primary-loss-under-load", "Injecting")
        assert phases("primary-loss-under-load") == {p: float(p == "Injecting") for p in metrics.DRILL_PHASES}
        metrics.drill_phase(NAMESPACE, "claim-chaos-drill", "Pending")  # another drill: its own series
        assert phases("primary-loss-under-load")["Injecting"] == 1
        text = httpx.get(f"http://127.0.0.1:{server.server_port}/metrics", timeout=5).text
        scraped = {(s.labels["drill"], s.labels["phase"]): s.value for f in text_string_to_metric_families(text)
                   if f.name == "pimlab_drill_phase" for s in f.samples}
        assert sum(v for (drill, _), v in scraped.items() if drill == "primary-loss-under-load") == 1
        assert scraped[("primary-loss-under-load", "Injecting")] == 1
        assert len(scraped) == 2 * len(metrics.DRILL_PHASES)

        metrics.forget_drill(NAMESPACE, "primary-loss-under-load")
        assert set(phases("primary-loss-under-load").values()) == {None}
        assert phases("claim-chaos-drill")["Pending"] == 1
    finally:
        metrics.forget_drill(NAMESPACE, "primary-loss-under-load")
        metrics.forget_drill(NAMESPACE, "claim-chaos-drill")
        server.shutdown()
        server.server_close()

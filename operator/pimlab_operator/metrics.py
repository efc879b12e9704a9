"""The operator's metrics, served on its /metrics port (`serve`): its own RED metrics by kind
(reconciles, errors, durations), and what the lab's runs did, for dashboards and the drill
report: each completed failover's duration, the chaos faults in flight, each drill's phase."""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager

import prometheus_client
from prometheus_client import Counter, Gauge, Histogram

RECONCILES = Counter("pimlab_operator_reconciles_total", "Reconciles run, by kind and trigger",
                     ["kind", "trigger"])
ERRORS = Counter("pimlab_operator_reconcile_errors_total", "Reconciles that raised, by kind",
                 ["kind", "error"])
DURATION = Histogram("pimlab_operator_reconcile_duration_seconds", "Reconcile wall time, by kind",
                     ["kind"], buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
APPLIED = Counter("pimlab_operator_applied_objects_total", "Children server-side applied",
                  ["kind", "child_kind"])
PRUNED = Counter("pimlab_operator_pruned_objects_total", "Children deleted because they left the desired set",
                 ["kind", "child_kind"])

FAILOVER_DURATION = Histogram(
    "sql_failover_duration_seconds",
    "Completed failovers and switchovers of a Shard, each observed once with the duration its "
    "status records (startedAt to the new primary's first write acknowledged by the quorum)",
    ["namespace", "shard", "reason"], buckets=(0.5, 1, 2, 3, 5, 7.5, 10, 15, 20, 30, 45, 60, 120, 300))
CHAOS_ACTIVE = Gauge(
    "chaos_experiment_active",
    "1 while a ChaosExperiment's run is in flight (injecting, recovering, or its fault not yet "
    "cleaned up), else 0",
    ["namespace", "experiment", "action"])
DRILL_PHASE = Gauge(
    "pimlab_drill_phase", "1 for a Drill's current phase, 0 for its other phases",
    ["namespace", "drill", "phase"])
#: A Drill's phases, in order (the Drill's status.phase).
DRILL_PHASES = ("Pending", "Preflight", "Baseline", "Injecting", "Recovering", "Judging",
                "Passed", "Failed", "Aborted")

#: (namespace, experiment) -> the action its series is labelled with; (namespace, drill) ->
#: the phases it has series for. Series are removed with the object (`forget_*`).
_chaos_actions: dict[tuple[str, str], str] = {}
_drill_phases: dict[tuple[str, str], set[str]] = {}
_series_lock = threading.Lock()


def serve(port: int, host: str = "0.0.0.0"):
    """The /metrics endpoint Prometheus scrapes (its own thread); returns the server."""
    server, _ = prometheus_client.start_http_server(port, addr=host)
    return server


@contextmanager
def observed(kind: str, trigger: str):
    RECONCILES.labels(kind, trigger).inc()
    started = time.perf_counter()
    try:
        yield
    except Exception as error:
        ERRORS.labels(kind, type(error).__name__).inc()
        raise
    finally:
        DURATION.labels(kind).observe(time.perf_counter() - started)


def failover_completed(namespace: str, shard: str, reason: str, seconds: float) -> None:
    """One completed failover. The caller decides that it is new (shard.status.completed_since)."""
    FAILOVER_DURATION.labels(namespace, shard, reason).observe(seconds)


def chaos_experiment_active(namespace: str, experiment: str, action: str, active: bool) -> None:
    """Set the experiment's series; a changed action replaces the series of the old one."""
    with _series_lock:
        before = _chaos_actions.get((namespace, experiment))
        if before is not None and before != action:
            CHAOS_ACTIVE.remove(namespace, experiment, before)
        _chaos_actions[(namespace, experiment)] = action
        CHAOS_ACTIVE.labels(namespace, experiment, action).set(1 if active else 0)


def forget_chaos_experiment(namespace: str, experiment: str) -> None:
    """The experiment is gone: its series goes with it."""
    with _series_lock:
        action = _chaos_actions.pop((namespace, experiment), None)
        if action is not None:
            CHAOS_ACTIVE.remove(namespace, experiment, action)


def drill_phase(namespace: str, drill: str, phase: str) -> None:
    """The drill is in `phase`: its series for `phase` is 1, every other phase's 0."""
    with _series_lock:
        phases = _drill_phases.setdefault((namespace, drill), set(DRILL_PHASES))
        phases.add(phase)
        for each in phases:
            DRILL_PHASE.labels(namespace, drill, each).set(1 if each == phase else 0)


def forget_drill(namespace: str, drill: str) -> None:
    """The drill is gone: its series go with it."""
    with _series_lock:
        for phase in _drill_phases.pop((namespace, drill), ()):
            DRILL_PHASE.remove(namespace, drill, phase)

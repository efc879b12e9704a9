"""The resync policy of the table of kinds: a quiet object backs off, a followed one does not
(an SLO reading Prometheus, a postgres Shard's failover pass, an experiment in flight)."""

from __future__ import annotations

import time

import pytest

from pimlab_operator import reconcile
from pimlab_operator.config import load_settings
from pimlab_operator.kinds import BY_NAME, FAILOVER_PASS_SECONDS
from pimlab_operator.shard.step import fails_over

REFRESH_SECONDS = 12.0
CTX = reconcile.Context(load_settings({"PIMLAB_SLO_REFRESH_SECONDS": str(REFRESH_SECONDS)}),
                        reconcile.ReconcileMemory())


@pytest.fixture()
def key():
    return ("Lab", "ns", f"quiet-{time.monotonic_ns()}")


def _period(kind: str, key, body: dict, quiet: int) -> float:
    now = time.monotonic()
    CTX.memory.quiet[key] = (quiet, now)
    return round(reconcile.resync_in(CTX, BY_NAME[kind], key, body, now) + (now - time.monotonic()))


def test_a_quiet_object_backs_off_x4_up_to_ten_minutes(key):
    assert [_period("Lab", key, {}, quiet) for quiet in range(5)] == [20, 80, 320, 600, 600]


def test_an_slo_that_reads_prometheus_keeps_its_refresh_period_from_the_settings(key):
    reading = {"status": {"conditions": [{"type": "BudgetCurrent", "status": "False", "reason": "PrometheusUnreachable"}]}}
    no_prometheus = {"status": {"conditions": [{"type": "BudgetCurrent", "status": "False", "reason": "NoPrometheusUrl"}]}}
    assert _period("SLO", key, reading, 5) == round(REFRESH_SECONDS)
    assert _period("SLO", key, no_prometheus, 1) == round(REFRESH_SECONDS * 4)


def test_a_shard_resync_backs_off_and_its_failover_pass_is_a_timer_of_its_own(key):
    assert _period("Shard", key, {"spec": {"engine": "postgres"}}, 1) == 80
    assert FAILOVER_PASS_SECONDS == 2.0
    assert fails_over({"spec": {"engine": "postgres"}})
    assert fails_over({"spec": {"engine": "sqlserver"}, "status": {"engine": "sqlserver"}})  # its group exists
    assert not fails_over({"spec": {"engine": "sqlserver"}})


@pytest.mark.parametrize("phase,followed", [("Running", True), ("Recovering", True), ("Pending", True),
                                            ("DryRun", False), ("Completed", False), (None, False)])
def test_an_experiment_is_followed_only_while_in_flight(key, phase, followed):
    body = {"status": {"phase": phase}} if phase else {}
    assert (_period("ChaosExperiment", key, body, 3) == 5) is followed


def test_a_child_seen_unchanged_since_our_apply_is_not_sent_again():
    """What the watch saw and what our apply returned compare equal unless the content moved:
    a controller's status update or a new resourceVersion is not a change, a label is."""
    applied = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a", "namespace": "n",
               "resourceVersion": "1", "labels": {"x": "1"}}, "data": {"k": "v"}}
    moved = {**applied, "metadata": {**applied["metadata"], "resourceVersion": "2"}, "status": {"ready": 1}}
    edited = {**applied, "metadata": {**applied["metadata"], "labels": {"x": "2"}}}
    assert reconcile._content(moved) == reconcile._content(applied)
    assert reconcile._content(edited) != reconcile._content(applied)

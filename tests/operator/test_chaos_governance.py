"""Who chaos may hit and when it must stop: opt-in, protected namespaces, the kill switch,
abortIf on SLO burn, the probes, and the cron schedule (pure functions of chaos/governance.py and
chaos/cron.py)."""

from __future__ import annotations

import datetime as dt

import pytest

from pimlab_operator.chaos import cron
from pimlab_operator.chaos import governance as gov
from pimlab_operator.chaos.model import AbortCondition, Probe

UTC = dt.timezone.utc


def ns(name: str, labels: dict | None = None, annotations: dict | None = None) -> dict:
    return {"metadata": {"name": name, "labels": labels or {}, "annotations": annotations or {}}}


def test_only_opted_in_namespaces_may_be_targeted():
    assert gov.namespace_refusal("lab", ns("lab", {"pim-sre.lab/chaos": "enabled"}), "pim-system") is None
    reason, message = gov.namespace_refusal("lab", ns("lab"), "pim-system")
    assert reason == "NamespaceNotOptedIn" and "kubectl label namespace lab pim-sre.lab/chaos=enabled" in message
    assert gov.namespace_refusal("lab", ns("lab", {"pim-sre.lab/chaos": "yes"}), "pim-system")[0] == "NamespaceNotOptedIn"
    assert gov.namespace_refusal("gone", None, "pim-system")[0] == "NamespaceNotOptedIn"


@pytest.mark.parametrize("name", ["kube-system", "kube-public", "kube-node-lease", "ops"])
def test_protected_namespaces_are_refused_even_when_labelled(name):
    reason, message = gov.namespace_refusal(name, ns(name, {"pim-sre.lab/chaos": "enabled"}), "ops")
    assert reason == "ProtectedNamespace" and name in message


def test_the_kill_switch_is_an_annotation_on_the_operator_namespace():
    assert gov.kill_switch(None) is None
    assert gov.kill_switch(ns("pim-system")) is None
    assert gov.kill_switch(ns("pim-system", annotations={"pim-sre.lab/chaos-paused": "false"})) is None
    message = gov.kill_switch(ns("pim-system", annotations={"pim-sre.lab/chaos-paused": "true"}))
    assert "kill switch is engaged" in message and "pim-system" in message


ABORT_IF = [AbortCondition(slo_ref="booking", burn_rate_above=14.4),
            AbortCondition(slo_ref="notes", budget_remaining_below=0.5)]


def test_slo_burn_above_the_threshold_aborts_with_the_measured_value():
    calm = {"booking": {"worstBurnRate": 2.0, "worstBurnWindow": "5m", "remaining": 0.9}, "notes": {"remaining": 0.8}}
    assert gov.slo_breach(ABORT_IF, calm) is None
    burning = {**calm, "booking": {"worstBurnRate": 30.5, "worstBurnWindow": "5m"}}
    reason, message = gov.slo_breach(ABORT_IF, burning)
    assert reason == "SLOBurnRateExceeded" and "30.5x over 5m" in message and "14.4" in message
    spent = {**calm, "notes": {"remaining": 0.25}}
    assert gov.slo_breach(ABORT_IF, spent)[0] == "SLOBudgetExhausted"


def test_an_unreadable_slo_aborts_and_an_slo_without_traffic_does_not():
    reason, message = gov.slo_breach(ABORT_IF, {"booking": "Prometheus unreachable", "notes": {}})
    assert reason == "SLOUnreadable" and "fail safe" in message and "Prometheus unreachable" in message
    assert gov.slo_breach(ABORT_IF, {"booking": {}, "notes": {}}) is None  # no data yet: nothing burns
    assert gov.slo_breach(ABORT_IF, {"notes": {}})[0] == "SLOUnreadable"
    assert "booking: unreadable" in gov.slo_summary({"booking": "down", "notes": {"remaining": 1}})


@pytest.mark.parametrize("schedule,after,expected", [
    ("*/15 * * * *", dt.datetime(2025, 1, 1, 10, 7, 30, tzinfo=UTC), dt.datetime(2025, 1, 1, 10, 15, tzinfo=UTC)),
    ("0 3 * * *", dt.datetime(2025, 1, 1, 3, 0, tzinfo=UTC), dt.datetime(2025, 1, 2, 3, 0, tzinfo=UTC)),
    ("@hourly", dt.datetime(2025, 1, 1, 10, 0, tzinfo=UTC), dt.datetime(2025, 1, 1, 11, 0, tzinfo=UTC)),
    ("30 9 * * 1-5", dt.datetime(2025, 1, 3, 10, 0, tzinfo=UTC), dt.datetime(2025, 1, 6, 9, 30, tzinfo=UTC)),  # Fri -> Mon
    ("0 0 29 2 *", dt.datetime(2025, 1, 1, tzinfo=UTC), dt.datetime(2028, 2, 29, tzinfo=UTC)),
    ("0 0 31 2 *", dt.datetime(2025, 1, 1, tzinfo=UTC), None),
    ("0 12 1 * 0", dt.datetime(2025, 1, 2, tzinfo=UTC), dt.datetime(2025, 1, 5, 12, 0, tzinfo=UTC)),  # 1st OR Sunday
])
def test_next_run_follows_cron(schedule, after, expected):
    if expected is None:
        with pytest.raises(cron.CronError, match="no time within 5 years"):
            cron.next_run(schedule, after)
    else:
        assert cron.next_run(schedule, after) == expected


@pytest.mark.parametrize("schedule", ["61 * * * *", "* * *", "*/0 * * * *", "5-1 * * * *"])
def test_bad_schedules_are_refused_with_the_field(schedule):
    with pytest.raises(cron.CronError):
        cron.next_run(schedule, dt.datetime(2025, 1, 1, tzinfo=UTC))


def test_a_probe_aborts_after_its_failure_threshold_in_a_row():
    probes = [Probe(name="gateway", url="http://x", failure_threshold=2), Probe(name="admin", url="http://y")]
    states, breach = gov.probe_verdict(probes, {"gateway": "HTTP 503", "admin": None}, None)
    assert breach is None
    assert states[0].to_k8s() == {"name": "gateway", "consecutiveFailures": 1, "lastError": "HTTP 503"}
    states, breach = gov.probe_verdict(probes, {"gateway": None, "admin": None}, states)
    assert breach is None and states[0].consecutive_failures == 0  # a pass resets the count
    states, _ = gov.probe_verdict(probes, {"gateway": "timeout", "admin": None}, states)
    states, breach = gov.probe_verdict(probes, {"gateway": "HTTP 503", "admin": None}, states)
    assert breach == ("ProbeFailed", "probe gateway failed 2 time(s) in a row (failureThreshold 2): HTTP 503")
    _, breach = gov.probe_verdict(probes, {"gateway": None, "admin": "connection refused"}, None)
    assert breach[0] == "ProbeFailed" and "probe admin failed 1" in breach[1]

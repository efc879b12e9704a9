"""A drill's verdict (pure): the budget arithmetic with worked numbers (docs/drills.md), each
hypothesis, the score, lost writes failing the drill whatever else held, compareTo, and the
preflight and fast-burn checks composed from chaos governance."""

from __future__ import annotations

import datetime as dt

import pytest

from pimlab_operator.drill import judge
from pimlab_operator.drill.judge import SloReading
from pimlab_operator.drill.model import DrillSpec, DrillStatus

START = dt.datetime(2026, 12, 8, 1, 0, tzinfo=dt.timezone.utc)
THIRTY_DAYS = 30 * 86400


def spec(**hypotheses) -> DrillSpec:
    return DrillSpec.model_validate({
        "labRef": "pim",
        "load": {"target": {"labRef": "pim"}, "personas": [{"name": "patient", "weight": 1}], "profile": {"rate": 5}},
        "steps": [{"baseline": {"duration": "60s"}},
                  {"inject": {"name": "kill", "experiment": {"action": "podKill", "target": {"shardRef": "shard-00"}}}},
                  {"recover": {"duration": "90s"}}],
        "hypotheses": hypotheses,
    })


def finished(seconds: float = 600, lost: int | None = 0, rto: float | None = 8.0, p95: float = 180) -> DrillStatus:
    return DrillStatus.model_validate({
        "window": {"start": START.isoformat(), "end": (START + dt.timedelta(seconds=seconds)).isoformat()},
        **({"ledger": {"acknowledged": 900, "verified": 900 - lost, "lost": lost}} if lost is not None else {}),
        **({"recovery": {"seconds": rto}} if rto is not None else {}),
        "latency": [{"journey": "bookEncounter", "p50": 40, "p95": p95, "p99": 400}],
    })


def test_budget_burned_is_the_drills_bad_events_over_the_windows_allowance():
    # 99.9 % over 30 d; a 600 s drill at 10 req/s with 2 % errors: 6000 requests, 120 bad.
    # At that rate the 30 d window allows 10 x 2 592 000 x 0.001 = 25 920 bad events, so the
    # drill burned 120 / 25 920 = 0.46 % of the budget; the same figure as mean burn rate 20
    # x 600 s / 2 592 000 s.
    reading = SloReading("booking", objective=99.9, window_seconds=THIRTY_DAYS, error_ratio=0.02, total_rate=10.0)
    bill = judge.budget(reading, 600, limit=0.05)
    assert bill.mean_burn_rate == pytest.approx(20)
    assert (bill.total_events, bill.bad_events) == (6000, 120)
    assert bill.burned == pytest.approx(120 / 25920) == pytest.approx(0.004630, abs=1e-6)
    assert bill.limit == 0.05


def test_a_young_labs_lifetime_figure_is_shown_not_judged():
    # The tour: 58 of 1526 requests failed, and Prometheus held 5 minutes, so the
    # SLO's own figure says -27.6; the drill judges its 150 s window instead.
    reading = SloReading("booking", objective=99.9, window_seconds=THIRTY_DAYS, error_ratio=58 / 1526,
                         total_rate=1526 / 150, lifetime_remaining=-27.6)
    bill = judge.budget(reading, 150, limit=0.02)
    assert bill.lifetime_remaining == -27.6
    assert bill.mean_burn_rate == pytest.approx(38.0079, abs=1e-3)
    assert bill.burned == pytest.approx(58 / (1526 / 150 * THIRTY_DAYS * 0.001))
    assert bill.burned == pytest.approx(0.0022, abs=1e-4)  # 0.22 % of a month's budget


def test_no_reading_means_no_figure_and_an_unmet_hypothesis():
    results, budgets = judge.hypotheses(spec(slos=[{"name": "booking", "maxBudgetBurn": 0.05}]), finished(),
                                        [SloReading("booking", objective=99.9, window_seconds=THIRTY_DAYS,
                                                    query="q", problem="no Prometheus named")])
    assert budgets[0].burned is None
    by_name = {r.name: r for r in results}
    assert not by_name["slo/booking/budgetBurn"].met and "no Prometheus named" in by_name["slo/booking/budgetBurn"].source
    assert not by_name["slo/booking/noPageAfterRecovery"].met  # alerts not read


def test_each_hypothesis_is_judged_with_its_source():
    the_spec = spec(slos=[{"name": "booking", "maxBudgetBurn": 0.01}], maxRecoverySeconds=15,
                    latency=[{"journey": "bookEncounter", "p95Ms": 300, "p99Ms": 300}])
    reading = SloReading("booking", objective=99.9, window_seconds=THIRTY_DAYS, error_ratio=0.02, total_rate=10.0,
                         firing_pages=("SLOErrorBudgetBurnPage",), query="sum(rate(errors[600s]))")
    results, _ = judge.hypotheses(the_spec, finished(), [reading])
    table = {r.name: (r.observed, r.limit, r.met) for r in results}
    assert table == {
        "slo/booking/budgetBurn": (pytest.approx(0.00463, abs=1e-5), 0.01, True),
        "slo/booking/noPageAfterRecovery": (1, 0, False),
        "maxRecoverySeconds": (8.0, 15, True),
        "maxLostWrites": (0, 0, True),
        "latency/bookEncounter/p95": (180, 300, True),
        "latency/bookEncounter/p99": (400, 300, False),
    }
    sources = {r.name: r.source for r in results}
    assert "sum(rate(errors[600s]))" in sources["slo/booking/budgetBurn"]
    assert "SLOErrorBudgetBurnPage" in sources["slo/booking/noPageAfterRecovery"]
    assert sources["latency/bookEncounter/p99"].startswith("PersonaLoad status.summary.byJourney")


def test_the_score_gives_partial_credit_for_a_near_miss():
    # met (1), p99 400 against 300: 2 - 400/300 = 0.667, page count 1 against 0: 0;
    # (1 + 1 + 1 + 1 + 0.667 + 0) / 6 = 0.778 -> 78.
    the_spec = spec(slos=[{"name": "booking", "maxBudgetBurn": 0.01}], maxRecoverySeconds=15,
                    latency=[{"journey": "bookEncounter", "p95Ms": 300, "p99Ms": 300}])
    reading = SloReading("booking", objective=99.9, window_seconds=THIRTY_DAYS, error_ratio=0.02, total_rate=10.0,
                         firing_pages=("SLOErrorBudgetBurnPage",))
    results, _ = judge.hypotheses(the_spec, finished(), [reading])
    assert judge.verdict(the_spec, results) == ("Failed", 78)
    everything_met = [r for r in results if r.met]
    assert judge.verdict(the_spec, everything_met) == ("Passed", 100)


def test_lost_writes_fail_the_drill_and_zero_its_score_whatever_else_held():
    the_spec = spec(maxRecoverySeconds=15, maxLostWrites=0)
    results, _ = judge.hypotheses(the_spec, finished(lost=2), [])
    lost = next(r for r in results if r.name == "maxLostWrites")
    assert (lost.observed, lost.met) == (2, False)
    assert judge.verdict(the_spec, results) == ("Failed", 0)
    tolerant = spec(maxLostWrites=5)
    assert judge.verdict(tolerant, judge.hypotheses(tolerant, finished(lost=2), [])[0]) == ("Passed", 100)


def test_a_drill_without_a_ledger_cannot_pass():
    results, _ = judge.hypotheses(spec(), finished(lost=None, rto=None), [])
    lost = next(r for r in results if r.name == "maxLostWrites")
    assert lost.observed is None and not lost.met and "no ledger" in lost.source
    assert judge.verdict(spec(), results) == ("Failed", 0)


def test_compare_to_the_last_passed_drill_of_the_same_prefix():
    drills = [
        {"metadata": {"name": "primary-loss-1"}, "status": {"verdict": "Passed", "finishedAt": "2026-12-01T10:00:00Z"}},
        {"metadata": {"name": "primary-loss-2"}, "status": {"verdict": "Passed", "finishedAt": "2026-12-02T10:00:00Z",
                                                          "latency": [{"journey": "bookEncounter", "p95": 150}]}},
        {"metadata": {"name": "primary-loss-3"}, "status": {"verdict": "Failed", "finishedAt": "2026-12-03T10:00:00Z"}},
        {"metadata": {"name": "claim-chaos-9"}, "status": {"verdict": "Passed", "finishedAt": "2026-12-04T10:00:00Z"}},
    ]
    earlier = judge.last_passed("primary-loss-4", drills)
    assert earlier["metadata"]["name"] == "primary-loss-2"
    the_spec = DrillSpec.model_validate({**spec().model_dump(by_alias=True, exclude_none=True),
                                         "compareTo": {"p95WorsePercent": 20}})
    results, _ = judge.hypotheses(the_spec, finished(p95=180), [], DrillStatus.model_validate(earlier["status"]),
                                  "primary-loss-2")
    compared = next(r for r in results if r.name.startswith("compareTo/"))
    assert (compared.name, compared.observed, compared.limit, compared.met) == \
        ("compareTo/bookEncounter/p95WorsePercent", pytest.approx(20.0), 20, True)
    worse, _ = judge.hypotheses(the_spec, finished(p95=181), [], DrillStatus.model_validate(earlier["status"]))
    assert not next(r for r in worse if r.name.startswith("compareTo/")).met


def test_preflight_and_fast_burn_compose_chaos_governance():
    the_spec = DrillSpec.model_validate({**spec(slos=[{"name": "booking", "maxBudgetBurn": 0.05}]).model_dump(
        by_alias=True, exclude_none=True), "abort": {"preflight": {"minBudgetRemaining": 0.5},
                                                     "fastBurn": {"burnRate": 14.4, "slos": ["claims"]}}})
    assert judge.watched_slos(the_spec) == ["booking", "claims"]
    healthy = {"remaining": 0.9, "worstBurnRate": 1.0, "worstBurnWindow": "5m", "firingAlerts": []}
    assert judge.preflight_refusal(the_spec, {"booking": healthy}) is None
    reason, message = judge.preflight_refusal(the_spec, {"booking": {**healthy, "remaining": 0.4}})
    assert reason == "SLOBudgetExhausted" and message.startswith("preflight: SLO booking has 0.4")
    ticket = {**healthy, "firingAlerts": [{"alert": "SLOErrorBudgetBurnTicket", "severity": "ticket"}]}
    assert judge.preflight_refusal(the_spec, {"booking": ticket}) is None  # only pages refuse
    assert judge.fast_burn_breach(the_spec, {"claims": {**healthy, "worstBurnRate": 14.0}}) is None
    assert judge.fast_burn_breach(the_spec, {"claims": {**healthy, "worstBurnRate": 15.0}})[0] == "SLOBurnRateExceeded"
    assert judge.fast_burn_breach(the_spec, {"claims": "no such SLO"})[0] == "SLOUnreadable"

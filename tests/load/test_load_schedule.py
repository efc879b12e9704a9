"""The arrival schedule: intended times of every pattern, and the split across N pods."""

from __future__ import annotations

import math

import pytest

from pimlab_load.journeys import PersonaPlan, arrival_rng, draw
from pimlab_load.schedule import SPIKE_END, SPIKE_START, Profile, arrivals, share


def times(profile: Profile) -> list[float]:
    return [t for _, t in arrivals(profile)]


def count_between(ts: list[float], a: float, b: float) -> int:
    return sum(1 for t in ts if a <= t < b)


def test_constant_rate_is_evenly_spaced_from_zero():
    ts = times(Profile(rate=100, duration=2))
    assert len(ts) == 200
    assert all(t == pytest.approx(i / 100, abs=1e-9) for i, t in enumerate(ts))


def test_ramp_follows_the_integral_of_a_linear_rate():
    """r(t) = 10 + 90 t / 10 over 10 s: Λ(t) = 10 t + 4.5 t², arrival i where Λ(t) = i."""
    ts = times(Profile(pattern="ramp", rate=10, peak_rate=100, duration=10))
    assert len(ts) == math.ceil(10 * 10 + 4.5 * 100)
    for i in (1, 50, 200, 549):
        expected = (-10 + math.sqrt(100 + 18 * i)) / 9  # root of 4.5 t² + 10 t - i
        assert ts[i] == pytest.approx(expected, abs=1e-3)


def test_ramp_up_warms_from_zero_then_holds_the_rate():
    ts = times(Profile(rate=100, duration=10, ramp_up=4))
    # warm-up: Λ = 100 t² / 8 for t < 4 (200 arrivals), then 100/s
    assert count_between(ts, 0, 4) == 200
    assert count_between(ts, 4, 14) == 1000
    assert ts[50] == pytest.approx(math.sqrt(50 * 8 / 100), abs=1e-3)


def test_spike_holds_peak_rate_in_the_middle_tenth():
    profile = Profile(pattern="spike", rate=20, peak_rate=200, duration=10)
    ts = times(profile)
    start, end = SPIKE_START * 10, SPIKE_END * 10
    assert count_between(ts, start, end) == pytest.approx(200 * (end - start), abs=2)
    assert count_between(ts, 0, start) == pytest.approx(20 * start, abs=2)
    assert count_between(ts, end, 10) == pytest.approx(20 * (10 - end), abs=2)


def test_diurnal_is_quiet_at_the_ends_and_peaks_in_the_middle():
    """r = 10 + 90 (1 - cos 2πt/D) / 2: total 55 per second on average."""
    profile = Profile(pattern="diurnal", rate=10, peak_rate=100, duration=20)
    ts = times(profile)
    assert len(ts) == pytest.approx(55 * 20, abs=1)
    assert count_between(ts, 9.5, 10.5) == pytest.approx(100, abs=2)
    assert count_between(ts, 0, 1) == pytest.approx(10 + 90 * (1 - math.sin(2 * math.pi / 20) * 20 / (2 * math.pi)) / 2, abs=2)
    assert profile.rate_at(10) == pytest.approx(100) and profile.rate_at(0) == pytest.approx(10)


def test_bursts_multiply_the_rate_for_their_length_every_period():
    profile = Profile(rate=50, duration=12, burst_every=5, burst_factor=4, burst_length=1)
    ts = times(profile)
    assert count_between(ts, 5, 6) == pytest.approx(200, abs=1)
    assert count_between(ts, 10, 11) == pytest.approx(200, abs=1)
    assert count_between(ts, 0, 5) == pytest.approx(250, abs=1)  # no burst at the start
    assert len(ts) == pytest.approx(50 * 12 + 2 * 150, abs=1)


@pytest.mark.parametrize("pods", [1, 2, 3, 7])
@pytest.mark.parametrize("pattern", ["constant", "ramp", "spike", "diurnal"])
def test_pods_split_the_one_schedule_without_gaps_or_overlaps(pattern, pods):
    profile = Profile(pattern=pattern, rate=30, peak_rate=90, duration=6, ramp_up=1,
                      burst_every=2, burst_factor=2, burst_length=0.5)
    whole = list(arrivals(profile))
    parts = [list(share(profile, k, pods)) for k in range(pods)]
    merged = sorted((i, t) for part in parts for i, t in part)
    assert merged == whole  # every arrival exactly once, at the same intended time
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1  # an even share


def test_count_limit_cuts_the_schedule_across_pods():
    profile = Profile(rate=100, duration=60)
    assert len(list(arrivals(profile, limit=250))) == 250
    assert sum(len(list(share(profile, k, 3, limit=250))) for k in range(3)) == 250
    with pytest.raises(ValueError):
        list(share(profile, 3, 3))


def test_what_each_arrival_does_depends_only_on_seed_and_index():
    personas = [PersonaPlan("patient", 3, ("bookEncounter", "reviewEncounter"), 0, 0),
                PersonaPlan("admin", 1, ("readKpis",), 0, 0)]
    first = [draw(arrival_rng(42, i), personas, 1000, 0.1) for i in range(400)]
    again = [draw(arrival_rng(42, i), personas, 1000, 0.1) for i in range(400)]
    other = [draw(arrival_rng(43, i), personas, 1000, 0.1) for i in range(400)]
    assert first == again and first != other
    share_of_patients = sum(d.persona.name == "patient" for d in first) / 400
    assert 0.65 < share_of_patients < 0.85  # weights 3:1
    assert 0.05 < sum(d.invalid for d in first) / 400 < 0.16

"""HDR histograms: the merge of N pods' reports equals the histogram of the combined samples,
and a pod's report fits the 4 KiB termination message."""

from __future__ import annotations

import json
import random

import pytest

from pimlab_load.report import (
    WIRE_LIMIT, Recorder, WireError, _coarse, from_wire, histogram, merge, summary, to_wire,
)

SHARDS = ("shard-00", "shard-01", "shard-02")
JOURNEYS = ("registerPatient", "bookEncounter", "reviewEncounter", "checkBilling",
            "documentEncounter", "submitClaim", "readKpis")


def samples(seed: int, n: int, spread: float = 1.0) -> list[tuple]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        persona = rng.choice(("patient", "clinician", "admin"))
        latency = rng.lognormvariate(9, spread)
        out.append((persona, rng.choice(JOURNEYS), rng.choice(SHARDS), rng.choice(("200", "202", "503")),
                    rng.random() < 0.02, latency, latency * 0.8, rng.expovariate(1 / 300)))
    return out


def recorder(rows) -> Recorder:
    rec = Recorder()
    for row in rows:
        rec.record(*row)
    rec.elapsed = 10.0
    return rec


def test_merged_pod_reports_equal_the_histogram_of_all_samples():
    pods = [samples(seed, 3000) for seed in range(4)]
    merged = merge([from_wire(to_wire(recorder(rows), k, 4))[0] for k, rows in enumerate(pods)])
    combined = recorder([row for rows in pods for row in rows])
    digits = merged.latency.significant_figures
    for attr in ("latency", "service", "lag"):
        expected = _coarse(getattr(combined, attr), digits)
        got = getattr(merged, attr)
        assert got.get_total_count() == expected.get_total_count() == 12000
        for q in (50, 90, 95, 99, 99.9, 100):
            assert got.get_value_at_percentile(q) == expected.get_value_at_percentile(q), (attr, q)
    assert merged.requests == 12000 and merged.errors == combined.errors
    assert merged.by_status == combined.by_status
    for dimension in ("persona", "journey", "shard"):
        for name, part in combined.by[dimension].items():
            mine = merged.by[dimension][name]
            assert mine.requests == part.requests and mine.errors == part.errors
            if mine.latency is not None:
                assert mine.latency.get_value_at_percentile(99) == \
                    _coarse(part.latency, mine.latency.significant_figures).get_value_at_percentile(99)


def test_percentiles_are_never_averaged():
    """Two pods, one fast and one slow: the merged p99 is the slow pod's tail, which the mean
    of the two p99s is not."""
    fast = recorder([("patient", "readKpis", "none", "200", False, 1000, 900, 10)] * 990)
    slow = recorder([("patient", "readKpis", "none", "200", False, 900_000, 900, 10)] * 30)
    merged = summary(merge([fast, slow]))
    assert merged["latencyMs"]["p99"] == pytest.approx(900, rel=0.01)
    mean_of_p99s = (summary(fast)["latencyMs"]["p99"] + summary(slow)["latencyMs"]["p99"]) / 2
    assert abs(mean_of_p99s - merged["latencyMs"]["p99"]) > 400


@pytest.mark.parametrize("spread", [0.3, 1.0, 2.0])
def test_a_report_fits_the_termination_message(spread):
    rec = recorder(samples(7, 20000, spread))
    message = to_wire(rec, 1, 2)
    assert len(message.encode()) <= WIRE_LIMIT
    back, pod, approx = from_wire(message)
    assert pod == (1, 2) and back.requests == 20000
    assert back.latency.get_total_count() == 20000
    # precision lost to fit, never more than HDR's bucket width at one significant digit
    assert back.latency.get_value_at_percentile(99) == pytest.approx(rec.latency.get_value_at_percentile(99), rel=0.07)
    assert set(approx) <= {"persona", "journey", "shard"}


def test_many_names_give_up_breakdown_histograms_but_keep_counts():
    rec = Recorder()
    rng = random.Random(1)
    for i in range(20000):
        rec.record(f"persona-{i % 16}", f"journey-{i % 7}", f"shard-{i % 64:02d}", "200", False,
                   rng.lognormvariate(9, 1.5), 100, 10)
    message = to_wire(rec)
    assert len(message.encode()) <= WIRE_LIMIT
    back, _, approx = from_wire(message)
    assert "shard" in approx
    assert sum(p.requests for p in back.by["shard"].values()) == 20000
    assert summary(back)["byShard"]["shard-05"].get("latencyMs") is None


@pytest.mark.parametrize("message", ["", "Traceback (most recent call last)", json.dumps({"v": 99}),
                                     json.dumps({"v": 1, "n": {}}), '{"v":1,"pod":[0,1],"h":{"latency":"xx"}}'])
def test_anything_else_is_refused(message):
    with pytest.raises(WireError):
        from_wire(message)


def test_summary_states_thresholds_and_saturation():
    rec = recorder([("patient", "readKpis", "none", "200", False, 400_000, 1000, 20_000)] * 100)
    rec.dropped = 3
    out = summary(rec, {"p95": "300ms", "errorRatio": 0.01})
    assert out["thresholdsMet"] is False
    assert [(c["name"], c["met"]) for c in out["thresholds"]] == [("p95", False), ("errorRatio", True)]
    assert out["saturated"] and "dropped" in out["saturationReason"] and "schedule lag" in out["saturationReason"]
    assert histogram().get_total_count() == 0

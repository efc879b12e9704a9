"""The ledger's arithmetic, without a server: how outages open and close, how the pods' outages
and results merge, and that a report with a ledger of hundreds of shards and thousands of lost
writes still fits the 4 KiB termination message. (Against the real services:
tests/services/test_ledger.py.)"""

from __future__ import annotations

import random

from pimlab_load.ledger import (
    LOST_SAMPLE,
    MESSAGE_CHARS,
    OUTAGES_PER_SHARD,
    LedgerResult,
    Outage,
    Slowest,
    WriteLedger,
    merge_outages,
    merge_results,
    status_fields,
    written,
)
from pimlab_load.report import WIRE_LIMIT, Recorder, from_wire, merge, to_wire


def test_an_outage_runs_from_the_first_failed_send_to_the_next_acknowledged_answer():
    ledger = WriteLedger()
    ledger.acknowledged("encounter", "enc-0001-a", 1, "k1", "shard-00", 100.0, 100.1)
    ledger.failed("shard-00", 110.0)
    ledger.failed("shard-00", 109.5)  # answered later, sent earlier: the outage starts at its send
    ledger.acknowledged("encounter", "enc-0001-b", 1, "k2", "shard-00", 109.0, 111.0)  # sent before: says nothing
    ledger.acknowledged("patient", "pat-1", 1, "k3", "shard-00", 111.0, 111.2, replayed=True)  # wrote nothing
    ledger.failed("shard-01", 112.0)
    ledger.acknowledged("claim", "clm-0001-c", 1, "k4", "shard-00", 113.0, 114.5)  # sent during, answered after
    ledger.failed("shard-00", 114.0)  # sent before the recovery was seen: the same outage
    outages = ledger.outages(ended=120.0)
    assert outages == [Outage("shard-00", 109.5, 114.5, 5.0, 3), Outage("shard-01", 112.0, None, 8.0, 1)]
    assert len(ledger.writes) == 4


def test_each_shard_keeps_its_five_longest_outages():
    ledger = WriteLedger()
    for i, length in enumerate([3, 1, 7, 2, 9, 4, 5, 8]):
        start = i * 100.0
        ledger.failed("shard-02", start)
        ledger.acknowledged("patient", f"pat-{i}", 1, None, "shard-02", start + length - 0.5, start + length)
    kept = ledger.outages(ended=1000.0)
    assert [o.seconds for o in kept] == [7, 9, 4, 5, 8]  # the five longest, in time order
    assert len(kept) == OUTAGES_PER_SHARD


def test_a_write_is_recorded_once_and_notes_by_version():
    ledger = WriteLedger()
    for _ in range(3):  # the population's registration replayed
        ledger.acknowledged("patient", "pat-1", 1, "pop-1-1", "shard-00", 1.0, 1.1)
    for version in (2, 3):
        ledger.acknowledged("notes", "enc-0001-a", version, None, "shard-00", 2.0, 2.1)
    assert sorted(w.kind for w in ledger.writes.values()) == ["notes", "notes", "patient"]
    assert written("PATCH", "/encounters/enc-0001-a/notes", {"encounter_id": "enc-0001-a", "version": 4}) == \
        ("notes", "enc-0001-a", 4)
    assert written("POST", "/claims", {"tracking_id": "clm-0002-b", "status": "accepted"}) == ("claim", "clm-0002-b", 1)
    assert written("GET", "/patients/pat-1", {"patient_id": "pat-1"}) is None


def test_the_pods_outages_of_a_shard_merge_where_they_overlap():
    pod0 = [Outage("shard-00", 10.0, 14.0, 4.0, 3), Outage("shard-00", 50.0, 51.0, 1.0, 1)]
    pod1 = [Outage("shard-00", 12.0, 18.0, 6.0, 2), Outage("shard-01", 12.0, None, 30.0, 1)]
    merged = merge_outages(pod0 + pod1)
    assert merged == [Outage("shard-00", 10.0, 18.0, 8.0, 5), Outage("shard-00", 50.0, 51.0, 1.0, 1),
                      Outage("shard-01", 12.0, None, 30.0, 1)]
    still_open = merge_outages([Outage("shard-00", 10.0, 14.0, 4.0, 1), Outage("shard-00", 13.0, None, 20.0, 1)])
    assert still_open == [Outage("shard-00", 10.0, None, 23.0, 2)]


def test_results_add_up_and_a_broken_chain_stays_broken():
    a = LedgerResult(10, 8, 1, 1, ["enc-0001-a"], {"shard-00": [6, 1], "shard-01": [4, 0]},
                     {"shard-00": (True, "40 events, chain intact"), "shard-01": (False, "1 problems: missing at seq 3")})
    b = LedgerResult(5, 5, 0, 0, [], {"shard-01": [5, 0]}, {"shard-01": (True, "50 events, chain intact")})
    merged = merge_results([a, b])
    assert (merged.acknowledged, merged.verified, merged.lost, merged.unverifiable) == (15, 13, 1, 1)
    assert merged.shards == {"shard-00": [6, 1], "shard-01": [9, 0]}
    assert merged.audit["shard-01"] == (False, "1 problems: missing at seq 3")
    status = status_fields(merged, None, None)["ledger"]
    assert status["shards"] == [{"shard": "shard-00", "acknowledged": 6, "lost": 1},
                                {"shard": "shard-01", "acknowledged": 9, "lost": 0}]


def _busy_report(seed: int, shards: int = 64, lost: int = 5000) -> Recorder:
    """A pod's report at the message's worst: many names, shards, outages and lost ids."""
    rng = random.Random(seed)
    rec = Recorder()
    for i in range(4000):
        latency = rng.lognormvariate(10, 1)
        rec.record(f"persona-{i % 16}", f"journey-{i % 16}", f"shard-{i % shards:02d}", str(rng.choice((200, 201, 503))),
                   False, latency, latency, 10)
    names = [f"shard-{i:02d}" for i in range(shards)]
    rec.ledger = LedgerResult(20000, 20000 - lost, lost, 0, [f"enc-{i:04d}-{'a' * 32}" for i in range(LOST_SAMPLE)],
                              {name: [300, lost // shards] for name in names},
                              {name: (False, "x" * 300) for name in names})
    rec.outages = [Outage(name, 1.8e9 + k * 60 + seed, 1.8e9 + k * 60 + 12.5, 12.5 - seed, 40) for name in names
                   for k in range(OUTAGES_PER_SHARD)]
    rec.slowest = Slowest("f" * 32, "journey-3", "POST /encounters", 2500.0 + seed, 1.8e9)
    return rec


def test_a_report_with_a_huge_ledger_fits_the_termination_message_and_keeps_its_counts():
    rec = _busy_report(0)
    message = to_wire(rec)
    assert len(message.encode()) <= WIRE_LIMIT
    back, _, _ = from_wire(message)
    assert back.ledger.lost == 5000 and back.ledger.acknowledged == 20000
    assert back.ledger.shards == rec.ledger.shards
    assert back.requests == 4000 and back.latency.get_total_count() == 4000
    assert back.slowest == rec.slowest


def test_a_small_ledger_travels_whole():
    rec = _busy_report(0, shards=3, lost=12)
    back, _, _ = from_wire(to_wire(rec))
    assert back.ledger.audit == {s: (False, "x" * MESSAGE_CHARS) for s in rec.ledger.audit}  # messages cut
    back.ledger.audit = rec.ledger.audit
    assert back.ledger == rec.ledger and back.outages == [
        Outage(o.shard, o.start, o.end, o.seconds, o.failed) for o in rec.outages]
    assert len(back.ledger.lost_sample) == LOST_SAMPLE


def test_two_pods_reports_merge_into_sums():
    pods = [from_wire(to_wire(_busy_report(seed, shards=3, lost=30)))[0] for seed in (1, 2)]
    merged = merge(pods)
    assert merged.ledger.acknowledged == 40000 and merged.ledger.lost == 60
    assert merged.ledger.shards == {f"shard-{i:02d}": [600, 20] for i in range(3)}
    assert merged.slowest.ms == 2502.0
    assert merged.requests == 8000
    fields = status_fields(merged.ledger, merged.outages, merged.slowest)
    assert len(fields["ledger"]["lostSample"]) == LOST_SAMPLE
    assert fields["slowest"]["at"].endswith("Z") and fields["writeOutages"][0]["start"].endswith("Z")

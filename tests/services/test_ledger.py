"""The write ledger against a real `pimlab serve` (3 SQLite shards): every acknowledged write is
read back and verified on a healthy server; writes deleted from a shard's store behind the
engine's back are counted lost, by id; an audit chain with a deleted event is reported broken;
a shard whose store is locked shows a write outage from its first failed write to its next
acknowledged one, on that shard only; two engine pods' reports merge into a PersonaLoad status
that adds up."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sqlite3
import subprocess
import sys
import threading
import time

import pytest

from pimlab_load.config import from_spec
from pimlab_load.dispatch import Engine
from pimlab_load.ledger import status_fields
from pimlab_load.report import WIRE_LIMIT, from_wire, to_wire
from pimlab_operator.personaload.model import PersonaLoadSpec
from pimlab_operator.personaload.status import personaload_status

from .conftest import run_cli, start_server

THINK = {"min": "0s", "max": "20ms"}
#: Every write the journeys make: registrations, bookings, notes and claims.
PERSONAS = [{"name": "patient", "weight": 2, "journeys": ["registerPatient", "bookEncounter"], "thinkTime": THINK},
            {"name": "clinician", "weight": 1, "journeys": ["documentEncounter"], "thinkTime": THINK},
            {"name": "admin", "weight": 1, "journeys": ["submitClaim"], "thinkTime": THINK}]
SHARDS = {"shard-00", "shard-01", "shard-02"}


def _server(tmp_path_factory, name: str):
    workdir = tmp_path_factory.mktemp(name)
    run_cli(workdir, "seed", "--patients", "5")
    srv = start_server(workdir)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    yield from _server(tmp_path_factory, "ledger")


@pytest.fixture(scope="module")
def wrecked(tmp_path_factory):
    """A server whose stores the tests damage."""
    yield from _server(tmp_path_factory, "ledger-wrecked")


@pytest.fixture(autouse=True)
def _data_dir_restored(monkeypatch):
    """`engine()` points PIM_DATA_DIR at its server; the test's end restores it."""
    monkeypatch.setenv("PIM_DATA_DIR", os.environ.get("PIM_DATA_DIR", ""))


def spec(server, rate: float = 15, duration: str = "3s", verify: bool = True, **extra) -> dict:
    return {"target": {"url": server.url}, "personas": PERSONAS, "population": {"patients": 60, "seed": 11},
            "profile": {"rate": rate, "duration": duration}, "failurePressure": {"timeout": "10s"},
            "ledger": {"enabled": True, "verify": verify}, **extra}


def engine(server, raw: dict, **env) -> Engine:
    os.environ["PIM_DATA_DIR"] = str(server.data_dir)  # the server's development issuer signs the tokens
    return Engine(from_spec(raw, {"PIM_DATA_DIR": str(server.data_dir), "PIM_LOAD_METRICS_PORT": "0", **env}))


def store(server, shard: str) -> sqlite3.Connection:
    return sqlite3.connect(server.data_dir / f"{shard}.sqlite3", timeout=10, isolation_level=None)


def test_every_acknowledged_write_is_verified_on_a_healthy_server(lab):
    load = engine(lab, spec(lab))
    rec = asyncio.run(load.run())
    out = status_fields(rec.ledger, rec.outages, rec.slowest)
    ledger = out["ledger"]
    kinds = {write.kind for write in load.ledger.writes.values()}
    assert kinds == {"patient", "encounter", "notes", "claim"}
    assert ledger["acknowledged"] == len(load.ledger.writes) > 20
    assert ledger["verified"] == ledger["acknowledged"], ledger
    assert ledger["lost"] == ledger["unverifiable"] == 0 and ledger["lostSample"] == []
    assert {s["shard"] for s in ledger["shards"]} == SHARDS
    assert sum(s["acknowledged"] for s in ledger["shards"]) == ledger["acknowledged"]
    assert all(c["ok"] and "chain intact" in c["message"] for c in ledger["auditChains"]), ledger["auditChains"]
    assert {c["shard"] for c in ledger["auditChains"]} == SHARDS
    assert out["writeOutages"] == []
    # every booking and claim was acknowledged with the Idempotency-Key the engine sent
    assert all(w.key and w.key.startswith(f"{load.cfg.run_key}-") for w in load.ledger.writes.values()
               if w.kind in ("encounter", "claim"))
    # the slowest request's trace id is the one its traceparent carried: the server logged it
    slowest = out["slowest"]
    assert re.fullmatch(r"[0-9a-f]{32}", slowest["traceId"]) and slowest["ms"] > 0
    assert slowest["journey"] in {"registerPatient", "bookEncounter", "documentEncounter", "submitClaim"}
    assert any(line.get("trace_id") == slowest["traceId"] for line in lab.log_lines())


def test_writes_deleted_behind_the_engines_back_are_lost_by_id(wrecked):
    load = engine(wrecked, spec(wrecked, verify=False))
    rec = asyncio.run(load.run())
    writes = list(load.ledger.writes.values())
    assert rec.ledger.acknowledged == len(writes) and rec.ledger.lost == rec.ledger.verified == 0  # not read back

    bookings = [w for w in writes if w.kind == "encounter"]
    documented = {w.id for w in writes if w.kind == "notes"}
    claimed = [w for w in writes if w.kind == "claim"]
    gone_booking = next(w for w in bookings if w.id not in documented)  # no notes of it in the ledger
    gone_claim = claimed[0]
    undone = next(w for w in writes if w.kind == "notes" and w.id != gone_booking.id)  # notes rolled back
    with store(wrecked, gone_booking.shard) as db:
        db.execute("DELETE FROM encounters WHERE encounter_id = ?", (gone_booking.id,))
    with store(wrecked, gone_claim.shard) as db:
        db.execute("DELETE FROM claims WHERE claim_id = ?", (gone_claim.id,))
    with store(wrecked, undone.shard) as db:
        db.execute("UPDATE encounters SET status = 'booked', version = 1, notes = NULL WHERE encounter_id = ?",
                   (undone.id,))
    lost = [w for w in writes if w.id == gone_booking.id or w.id == gone_claim.id
            or (w.kind == "notes" and w.id == undone.id)]
    asyncio.run(load.verify_writes())
    result = load.rec.ledger
    assert result.lost == len(lost) >= 3
    assert sorted(result.lost_sample) == sorted(w.id for w in lost)
    assert result.verified == len(writes) - len(lost) and result.unverifiable == 0
    assert sum(lost for _, lost in result.shards.values()) == len(lost)
    for shard, (_, lost_here) in result.shards.items():
        assert lost_here == sum(1 for w in lost if w.shard == shard)

    # Every encounter and claim of the run gone: far more lost ids than the report names, and
    # the termination message still fits (with the histograms) and says how many.
    for shard in SHARDS:
        with store(wrecked, shard) as db:
            db.execute("DELETE FROM claims")
            db.execute("DELETE FROM encounters")
    asyncio.run(load.verify_writes())
    result = load.rec.ledger
    gone = sum(1 for w in writes if w.kind in ("encounter", "notes", "claim"))
    assert result.lost == gone > 10 and len(result.lost_sample) == 10
    assert result.verified == sum(1 for w in writes if w.kind == "patient")
    message = to_wire(rec)
    assert len(message.encode()) <= WIRE_LIMIT
    back, _, _ = from_wire(message)
    assert back.ledger.lost == gone and back.ledger.acknowledged == len(writes)
    assert back.ledger.lost_sample == result.lost_sample
    assert back.requests == rec.requests and back.latency.get_total_count() == rec.requests


def test_an_audit_chain_with_a_deleted_event_is_reported_broken(wrecked):
    load = engine(wrecked, spec(wrecked, rate=10, duration="1s", verify=False))
    asyncio.run(load.run())
    with store(wrecked, "shard-01") as db:
        seq = db.execute("SELECT min(seq) FROM audit_events").fetchone()[0] + 1
        db.execute("DELETE FROM audit_events WHERE seq = ?", (seq,))
    asyncio.run(load.verify_writes())
    chains = load.rec.ledger.audit
    written_to = {w.shard for w in load.ledger.writes.values()}
    assert set(chains) == written_to and "shard-01" in written_to
    ok, message = chains["shard-01"]
    assert not ok and "missing" in message and f"seq {seq}" in message, message
    assert all(chains[shard][0] for shard in written_to - {"shard-01"})


def test_a_locked_shard_shows_a_write_outage_from_first_failure_to_next_ack(lab):
    """shard-00's store locked for 4 s mid-run (a stuck primary): its writes wait, some past the
    services' 2 s acquire bound (a 503), the rest are answered once the lock goes. Writes to other
    shards fail too when their Idempotency-Key's home record lives on shard-00 (transactions.py):
    those shards' outages lie inside shard-00's."""
    load = engine(lab, spec(lab, rate=20, duration="8s"))
    times: dict[str, float] = {}

    def lock_shard_00():
        time.sleep(2.0)
        db = store(lab, "shard-00")
        db.execute("BEGIN IMMEDIATE")
        times["locked"] = time.time()
        time.sleep(4.0)
        times["unlocked"] = time.time()
        db.execute("ROLLBACK")
        db.close()

    locker = threading.Thread(target=lock_shard_00)
    locker.start()
    rec = asyncio.run(load.run())
    locker.join()
    outages = status_fields(rec.ledger, rec.outages, rec.slowest)["writeOutages"]
    by_shard = {shard: [o for o in rec.outages if o.shard == shard] for shard in {o.shard for o in rec.outages}}
    seen = (times, outages, rec.by_status)
    assert len(by_shard.get("shard-00", [])) == 1, seen
    outage = by_shard["shard-00"][0]
    assert outage.end is not None and outage.failed >= 1, seen
    # from a write sent once the store was locked to the answer of the next acknowledged one
    assert times["locked"] - 0.2 <= outage.start <= times["locked"] + 1.0, seen
    assert times["unlocked"] - 0.1 <= outage.end <= times["unlocked"] + 2.5, seen
    assert outage.seconds == pytest.approx(outage.end - outage.start)
    for other in set(by_shard) - {"shard-00"}:
        for collateral in by_shard[other]:
            assert outage.start - 0.2 <= collateral.start and collateral.end <= outage.end + 2.5, seen
    assert rec.ledger.lost == 0 and rec.ledger.verified == rec.ledger.acknowledged  # failed is not lost


def test_a_stopped_run_counts_its_writes_unverifiable_never_lost(lab):
    """SIGTERM (a deleted Job, a drill's abort) leaves no time to read back: the writes are
    counted and unverifiable; the report is still written."""
    load = engine(lab, spec(lab, rate=15, duration="30s"))
    threading.Timer(2.0, lambda: load.loop.call_soon_threadsafe(load.stop, "signal")).start()
    rec = asyncio.run(load.run())
    assert rec.stopped == "signal"
    assert rec.ledger.acknowledged == len(load.ledger.writes) > 0
    assert rec.ledger.unverifiable == rec.ledger.acknowledged and rec.ledger.verified == rec.ledger.lost == 0
    assert rec.ledger.audit == {}
    assert from_wire(to_wire(rec))[0].ledger.unverifiable == rec.ledger.acknowledged


def test_two_engine_pods_merge_into_a_status_that_adds_up(lab, tmp_path):
    """Two `pimlab load run` processes (pods 0 and 1 of 2) write their termination messages;
    the PersonaLoad status merges them."""
    raw = PersonaLoadSpec.model_validate(spec(lab, rate=12, duration="2s", parallelism=2)).to_k8s()
    config = tmp_path / "config.json"
    config.write_text(json.dumps(raw))
    procs, messages = [], []
    for index in (0, 1):
        env = {**os.environ, "PIM_DATA_DIR": str(lab.data_dir), "PIM_LOAD_METRICS_PORT": "0",
               "JOB_COMPLETION_INDEX": str(index), "PIM_LOAD_TERMINATION_PATH": str(tmp_path / f"term-{index}"),
               "PIM_LOAD_RUN_ID": "merge-run"}
        procs.append(subprocess.Popen([sys.executable, "-m", "pimlab.cli", "load", "run", "--config", str(config)],
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    for index, proc in enumerate(procs):
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err[-2000:]
        messages.append((tmp_path / f"term-{index}").read_text())
    reports = [from_wire(m)[0] for m in messages]
    assert all(r.ledger.acknowledged > 0 for r in reports)

    pods = [{"metadata": {"name": f"merge-{i}", "creationTimestamp": "2025-01-01T00:00:00Z",
                          "annotations": {"batch.kubernetes.io/job-completion-index": str(i)}},
             "status": {"phase": "Succeeded", "containerStatuses": [
                 {"name": "engine", "state": {"terminated": {"exitCode": 0, "message": m}}}]}}
            for i, m in enumerate(messages)]
    job = {"metadata": {"name": "merge-abc"}, "spec": {"completions": 2},
           "status": {"startTime": "2025-01-01T00:00:00Z", "completionTime": "2025-01-01T00:01:00Z",
                      "conditions": [{"type": "Complete", "status": "True"}]}}
    body = {"metadata": {"name": "merge", "namespace": "lab"}, "spec": raw}
    status, _ = personaload_status(body, PersonaLoadSpec.model_validate(raw), "img", job, None, pods)
    status = status.to_k8s()
    ledger = status["ledger"]
    for key in ("acknowledged", "verified", "lost", "unverifiable"):
        assert ledger[key] == sum(getattr(r.ledger, key) for r in reports), key
    assert ledger["verified"] == ledger["acknowledged"] and ledger["lost"] == 0
    for entry in ledger["shards"]:
        assert entry["acknowledged"] == sum(r.ledger.shards.get(entry["shard"], [0, 0])[0] for r in reports)
    assert {c["shard"] for c in ledger["auditChains"]} == SHARDS and all(c["ok"] for c in ledger["auditChains"])
    assert status["writeOutages"] == []
    slowest = max((r.slowest for r in reports), key=lambda s: s.ms)
    assert status["slowest"]["traceId"] == slowest.trace_id
    assert status["slowest"]["ms"] == pytest.approx(slowest.ms, abs=0.001)
    assert status["summary"]["requests"] == sum(r.requests for r in reports)

"""kill -9 during writes: every acknowledged write survives with its audit and outbox rows,
and the projection catches up exactly once per event."""

from __future__ import annotations

import signal
import sqlite3
import threading
import time

import httpx

from api_services.sharding import load_map

from .conftest import booking, run_cli, start_server


def test_kill_minus_9_loses_no_acknowledged_write(tmp_path):
    run_cli(tmp_path, "seed", "--patients", "9")
    server = start_server(tmp_path)
    with server.client("admin", "admin-1") as admin:
        pids = [admin.post("/patients", json={"pseudonym": f"Durable {c}", "birth_year": 1990, "sex": "F"}).json()["patient_id"]
                for c in "ABCDEF"]
    acked: list[str] = []
    stop = threading.Event()

    def writer(n: int):
        with httpx.Client(base_url=server.url, timeout=5,
                          headers={"Authorization": f"Bearer {server.token('clinician', 'prv-0001')}"}) as c:
            i = 0
            while not stop.is_set():
                try:
                    resp = c.post("/encounters", json=booking(pids[(n + i) % len(pids)]))
                except httpx.HTTPError:
                    return
                if resp.status_code == 202:
                    acked.append(resp.json()["tracking_id"])
                i += 1

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    time.sleep(2.0)
    server.proc.send_signal(signal.SIGKILL)
    server.proc.wait()
    stop.set()
    for t in threads:
        t.join()
    assert len(acked) > 20, "too few writes before the kill to mean anything"
    smap = load_map(tmp_path / ".lab/data/shard-map.json")
    # As the kill left the files: no row claimed by the dead relay without being published (claim,
    # append and publish are one transaction), so nothing waits for a lease to expire.
    for shard in smap.shards:
        with sqlite3.connect(shard.sqlite_path) as db:
            assert db.execute("select count(*) from outbox where claimed_by is not null and published_at is null"
                              ).fetchone()[0] == 0

    server = start_server(tmp_path)  # restart on the same files
    try:
        dbs = [sqlite3.connect(s.sqlite_path) for s in smap.shards]

        def count(sql: str, *args) -> int:
            return sum(db.execute(sql, args).fetchone()[0] for db in dbs)

        for enc_id in acked:
            assert count("select count(*) from encounters where encounter_id=?", enc_id) == 1
            assert count("select count(*) from audit_events where entity_id=? and action='encounter.book'", enc_id) == 1
            assert count("select count(*) from outbox where entity_id=? and event_type='encounter.booked'", enc_id) == 1
        def caught_up() -> bool:
            return count("select count(*) from outbox where published_at is null") == 0 and \
                count("select count(*) from processed_events") == count("select count(*) from outbox")

        # Condition-based: returns as soon as the workers catch up (about a second when idle); the
        # bound is only there for a loaded 2-core CI machine, not a timing assumption.
        deadline = time.monotonic() + 120
        while not caught_up() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert count("select count(*) from outbox where published_at is null") == 0
        assert count("select count(*) from processed_events") == count("select count(*) from outbox")
        assert count("select count(*) from event_stream") == count("select count(*) from outbox")
        booked = count("select count(*) from outbox where event_type='encounter.booked'")
        assert count("select coalesce(sum(value),0) from financial_kpis where kpi='encounters_booked'") == booked
        assert run_cli(tmp_path, "audit", "verify", check=False).returncode == 0
        assert run_cli(tmp_path, "replay", check=False).returncode == 0
    finally:
        server.stop()

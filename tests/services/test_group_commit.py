"""Group commit on SQLite (PostgreSQL's is in tests/instance/test_services_on_postgres.py): a write
is acknowledged only after the COMMIT that covers it, each write is still one atomic unit, and a
failing write takes only itself out of its batch."""

from __future__ import annotations

import signal
import sqlite3
import threading
import time

import httpx

from api_services.sharding import load_map

from .conftest import booking, run_cli, start_server


def _batched_writes(metrics: str) -> float:
    """Writes that were committed together with at least one other write, from /metrics."""
    total = ones = 0.0
    for line in metrics.splitlines():
        if line.startswith("pim_group_commit_writes_count"):
            total += float(line.rsplit(" ", 1)[1])
        elif line.startswith("pim_group_commit_writes_bucket") and 'le="1.0"' in line:
            ones += float(line.rsplit(" ", 1)[1])
    return total - ones


def test_kill_minus_9_during_group_commits_loses_no_acknowledged_write(tmp_path):
    run_cli(tmp_path, "seed", "--patients", "12")
    server = start_server(tmp_path)
    with server.client("admin", "admin-1") as admin:
        pids = [admin.post("/patients", json={"pseudonym": f"Grouped {c}", "birth_year": 1990, "sex": "M"}
                           ).json()["patient_id"] for c in "ABCDEFGH"]
    acked: list[tuple[str, str]] = []  # (encounter id, idempotency key)
    stop = threading.Event()
    token = server.token("clinician", "prv-0001")

    def writer(n: int):
        with httpx.Client(base_url=server.url, timeout=5, headers={"Authorization": f"Bearer {token}"}) as c:
            i = 0
            while not stop.is_set():
                key = f"gc-{n}-{i}"
                try:
                    resp = c.post("/encounters", json=booking(pids[(n + i) % len(pids)]),
                                  headers={"Idempotency-Key": key})
                except httpx.HTTPError:
                    return
                if resp.status_code == 202:
                    acked.append((resp.json()["tracking_id"], key))
                i += 1

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(16)]
    for t in threads:
        t.start()
    # Kill only once commits are really grouped (several writes per COMMIT), mid-load.
    deadline = time.monotonic() + 60
    while _batched_writes(httpx.get(server.url + "/metrics", timeout=5).text) < 20 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _batched_writes(httpx.get(server.url + "/metrics", timeout=5).text) >= 20, "no write was group-committed"
    time.sleep(0.3)
    server.proc.send_signal(signal.SIGKILL)
    server.proc.wait()
    stop.set()
    for t in threads:
        t.join()
    assert len(acked) > 20

    smap = load_map(tmp_path / ".lab/data/shard-map.json")
    dbs = [sqlite3.connect(s.sqlite_path) for s in smap.shards]

    def count(sql: str, *args) -> int:
        return sum(db.execute(sql, args).fetchone()[0] for db in dbs)

    for enc_id, _key in acked:  # every acknowledged write, whole: row, audit event, history, outbox
        assert count("select count(*) from encounters where encounter_id=?", enc_id) == 1
        assert count("select count(*) from audit_events where entity_id=? and action='encounter.book'", enc_id) == 1
        assert count("select count(*) from history where entity_id=?", enc_id) == 1
        assert count("select count(*) from outbox where entity_id=? and event_type='encounter.booked'", enc_id) == 1
    # Nothing half-written by the kill: every row has its audit event, history row and outbox event.
    assert count("select count(*) from encounters") == count(
        "select count(*) from audit_events where action='encounter.book'")
    assert count("select count(*) from history") == count("select count(*) from audit_events") == count(
        "select count(*) from outbox")
    for db in dbs:
        db.close()
    verify = run_cli(tmp_path, "audit", "verify", check=False)
    assert verify.returncode == 0, verify.stdout[-2000:]

    server = start_server(tmp_path)  # the same keys after the restart: the first answers, no second write
    try:
        with httpx.Client(base_url=server.url, timeout=10, headers={"Authorization": f"Bearer {token}"}) as c:
            for enc_id, key in acked[:: max(1, len(acked) // 25)]:
                resp = c.post("/encounters", json=booking(_patient_of(tmp_path, smap, enc_id)),
                              headers={"Idempotency-Key": key})
                assert resp.status_code == 202 and resp.json()["tracking_id"] == enc_id
                assert resp.headers.get("idempotent-replayed") == "true"
    finally:
        server.stop()


def _patient_of(tmp_path, smap, enc_id: str) -> str:
    for shard in smap.shards:
        with sqlite3.connect(shard.sqlite_path) as db:
            row = db.execute("select patient_id from encounters where encounter_id=?", (enc_id,)).fetchone()
        if row:
            return row[0]
    raise AssertionError(f"{enc_id} not found")


def test_a_failing_write_rolls_back_only_itself_in_its_batch(tmp_path):
    """Bookings for an unknown provider (refused inside the transaction, 422) mixed into concurrent
    valid ones for the same patient (so the same shard and batches):
    the refused ones leave nothing, the valid ones all commit and the chain verifies."""
    run_cli(tmp_path, "seed", "--patients", "6")
    server = start_server(tmp_path)
    try:
        with server.client("admin", "admin-1") as admin:
            pid = admin.post("/patients", json={"pseudonym": "Mixed A", "birth_year": 1980, "sex": "F"}
                             ).json()["patient_id"]
        token = server.token("clinician", "prv-0001")
        results: list[int] = []

        def one(i: int):
            body = booking(pid) if i % 2 == 0 else {**booking(pid), "provider_id": "prv-9999"}
            with httpx.Client(base_url=server.url, timeout=10, headers={"Authorization": f"Bearer {token}"}) as c:
                for _ in range(10):
                    results.append(c.post("/encounters", json=body).status_code)

        threads = [threading.Thread(target=one, args=(i,)) for i in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert results.count(202) == 60
        assert results.count(422) == 60, sorted(set(results))
        metrics = httpx.get(server.url + "/metrics", timeout=5).text
        assert _batched_writes(metrics) > 0, "the mix was never committed as a group"
    finally:
        server.stop()
    smap = load_map(tmp_path / ".lab/data/shard-map.json")
    booked = sum(sqlite3.connect(s.sqlite_path).execute(
        "select count(*) from encounters where patient_id=?", (pid,)).fetchone()[0] for s in smap.shards)
    assert booked == 60
    assert run_cli(tmp_path, "audit", "verify", check=False).returncode == 0

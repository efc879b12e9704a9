"""Issue 12, item 2: one bad shard never takes down the rest.

A locked shard, a shard whose relay is stuck and a shard whose store cannot be opened each affect
only that shard's requests and background work; writes that cannot get their shard in bounded
time answer 503 + Retry-After; workers recover by themselves once the cause is gone; /readyz and
/metrics name the unhealthy shard and why.
"""

from __future__ import annotations

import json
import re
import sqlite3
import time

import pytest

from api_services.seed import seeded_patient_id
from api_services.sharding import load_map, slot_of

from .conftest import booking, run_cli, start_server


def _by_shard(smap, n: int = 12) -> dict[str, str]:
    out: dict[str, str] = {}
    for i in range(n):
        pid = seeded_patient_id(42, i)
        out.setdefault(smap.shard_for_slot(slot_of(pid, smap.slot_count)).name, pid)
    return out


def _eventually(predicate, seconds: float = 15.0, what: str = "condition"):
    deadline = time.monotonic() + seconds
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def _metric(text: str, name: str, **labels) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("isolation")
    run_cli(workdir, "seed", "--patients", "12")
    srv = start_server(workdir, env={"PIM_SHARD_ACQUIRE_SECONDS": "1"})
    yield srv
    srv.stop()


def test_a_locked_shard_answers_503_quickly_while_the_others_write_and_project(lab):
    smap = load_map(lab.data_dir / "shard-map.json")
    pids = _by_shard(smap)
    locked, other = sorted(pids)[0], sorted(pids)[1]
    holder = sqlite3.connect(smap.by_name(locked).sqlite_path, isolation_level=None, timeout=5)
    with lab.client("clinician", "prv-0001") as doc, lab.client("admin", "admin-1") as admin:
        booked_before = {s["shard"]: s["encounters_booked"] for s in admin.get("/kpis/financial").json()["shards"]}
        holder.execute("BEGIN IMMEDIATE")  # another process holds the shard's write lock
        try:
            started = time.monotonic()
            refused = doc.post("/encounters", json=booking(pids[locked]))
            assert time.monotonic() - started < 5, "a write waited far past the acquisition bound"
            assert refused.status_code == 503, refused.text
            assert refused.json()["code"] == "shard_unavailable" and int(refused.headers["retry-after"]) >= 1
            assert locked in refused.json()["message"] and "Error" not in refused.json()["message"]
            started = time.monotonic()
            assert doc.post("/encounters", json=booking(pids[other])).status_code == 202
            assert time.monotonic() - started < 2
            _eventually(lambda: {s["shard"]: s["encounters_booked"] for s in admin.get("/kpis/financial").json()["shards"]
                                 }[other] > booked_before[other], what="the healthy shard's projection")

            def named():
                resp = doc.get("/readyz")
                check = resp.json()["checks"].get(f"outbox-relay:{locked}", "")
                return resp if "locked" in check else None

            ready = _eventually(named, what="readyz naming the locked shard")
            assert ready.status_code == 200 and ready.json()["status"] == "degraded"
            assert ready.json()["checks"][f"outbox-relay:{other}"] == "ok"
            metrics = doc.get("/metrics").text
            assert _metric(metrics, "pim_worker_up", worker="outbox-relay", shard=locked) == 0
            assert _metric(metrics, "pim_worker_up", worker="outbox-relay", shard=other) == 1
        finally:
            holder.execute("ROLLBACK")
        _eventually(lambda: doc.get("/readyz").json()["status"] == "ready", what="recovery after the lock is gone")
        assert doc.post("/encounters", json=booking(pids[locked])).status_code == 202
        assert _metric(doc.get("/metrics").text, "pim_worker_up", worker="outbox-relay", shard=locked) == 1


def test_outbox_pending_metric_is_true_while_the_relay_is_stuck(lab):
    smap = load_map(lab.data_dir / "shard-map.json")
    pids = _by_shard(smap)
    stuck = sorted(pids)[-1]
    db = sqlite3.connect(smap.by_name(stuck).sqlite_path, isolation_level=None, timeout=10)
    with lab.client("clinician", "prv-0001") as doc:
        _eventually(lambda: _metric(doc.get("/metrics").text, "pim_outbox_pending_events", shard=stuck) == 0,
                    what="an idle relay")
        db.execute("ALTER TABLE event_stream RENAME TO event_stream_hidden")  # the relay can no longer publish
        try:
            for _ in range(3):
                assert doc.post("/encounters", json=booking(pids[stuck])).status_code == 202
            _eventually(lambda: _metric(doc.get("/metrics").text, "pim_outbox_pending_events", shard=stuck) == 3,
                        what="pending events counted while the relay fails")
            check = _eventually(lambda: doc.get("/readyz").json()["checks"].get(f"outbox-relay:{stuck}", "ok") != "ok"
                                and doc.get("/readyz").json()["checks"][f"outbox-relay:{stuck}"])
            assert "event_stream" in check
        finally:
            db.execute("ALTER TABLE event_stream_hidden RENAME TO event_stream")
        _eventually(lambda: _metric(doc.get("/metrics").text, "pim_outbox_pending_events", shard=stuck) == 0,
                    what="the relay catching up once the cause is gone")


def test_an_unopenable_shard_leaves_the_others_serving_until_the_map_is_corrected(tmp_path):
    run_cli(tmp_path, "seed", "--patients", "12")
    good = json.loads((tmp_path / ".lab/data/shard-map.json").read_text())
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a directory should be\n")
    bad = json.loads(json.dumps(good))
    bad["shards"][1]["sqlitePath"] = str(blocker / "shard-01.sqlite3")
    map_file = tmp_path / "cluster-map.json"
    map_file.write_text(json.dumps(bad))
    srv = start_server(tmp_path, env={"PIM_SHARD_MAP_FILE": str(map_file), "PIM_SHARD_ACQUIRE_SECONDS": "1"})
    try:
        smap = load_map(map_file)
        pids = _by_shard(smap)
        with srv.client("clinician", "prv-0001") as doc, srv.client("admin", "admin-1") as admin:
            ready = doc.get("/readyz")
            assert ready.status_code == 200 and ready.json()["status"] == "degraded"
            assert re.search(r"cannot (be )?open", ready.json()["checks"]["shard-01"])
            assert ready.json()["checks"]["shard-00"] == "ok"
            down = doc.post("/encounters", json=booking(pids["shard-01"]))
            assert down.status_code == 503 and down.json()["code"] == "shard_unavailable" and down.headers["retry-after"]
            assert doc.post("/encounters", json=booking(pids["shard-00"])).status_code == 202
            assert doc.get("/providers").status_code == 200
            kpis = admin.get("/kpis/financial")
            assert kpis.status_code == 200 and kpis.json()["unavailable_shards"] == ["shard-01"]
            assert _metric(doc.get("/metrics").text, "pim_shard_up", shard="shard-01") == 0
            map_file.write_text(json.dumps({**good, "version": good["version"] + 1}))  # the fix
            _eventually(lambda: doc.get("/readyz").json()["status"] == "ready", what="recovery after the map fix")
            assert doc.post("/encounters", json=booking(pids["shard-01"])).status_code == 202
            assert _metric(doc.get("/metrics").text, "pim_shard_up", shard="shard-01") == 1
    finally:
        srv.stop()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # it dies on purpose
def test_a_worker_thread_that_dies_is_restarted_by_its_supervisor():
    """Supervision in-process: a step that kills its thread (not an Exception) is restarted, counted."""
    import threading

    from api_services.runtime import WorkerHealth
    from api_services.telemetry import REGISTRY
    from api_services.workers import WorkerPool

    calls = {"n": 0}
    done = threading.Event()

    def step(_engine, _shard):
        calls["n"] += 1
        if calls["n"] == 1:
            raise SystemExit("the thread dies")  # not caught by the step's retry: only supervision helps
        done.set()
        return 0

    from api_services.group_commit import Changes

    class FakeEngines:
        signal = Changes()

        def write(self, _shard):
            return None

        def changes(self, _shard):
            return self.signal

    class FakeRuntime:
        engines, worker_health = FakeEngines(), WorkerHealth()

        def shard_names(self):
            return ["shard-x"]

    before = REGISTRY.get_sample_value("pim_worker_restarts_total", {"worker": "test-pool"}) or 0
    pool = WorkerPool("test-pool", FakeRuntime(), step, interval=0.05, every=0.05)
    pool.start()
    try:
        assert done.wait(5), "the dead worker was not restarted"
    finally:
        pool.stop()
        pool.join(2)
    assert REGISTRY.get_sample_value("pim_worker_restarts_total", {"worker": "test-pool"}) == before + 1

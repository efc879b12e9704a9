"""The services on a real PostgreSQL shard (`postgresql+psycopg`, the same SQLAlchemy Core code as
SQLite and SQL Server), through a `-primary` Service stand-in, while the primary is killed -9:
every write gets 202 or 503 with Retry-After within a bounded time (never 500, never a hang),
every acknowledged booking is on the new primary, and the audit chain still verifies."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
from pg_local import LocalShard, ServiceProxy, available, free_ports

from api_services.auth import issue_dev_token
from api_services.config import load_settings
from pimlab_operator.shard.failover import Policy

pytestmark = pytest.mark.skipif(available() is not None, reason=available() or "")

POLICY = Policy(unhealthy_after_seconds=5)
WRITE_TIMEOUT = 3.0
BOUND = WRITE_TIMEOUT + 3 + 2  # quorum timer + connect_timeout + slack


def _cli(workdir: Path, env: dict, *args: str, **kw):
    return subprocess.Popen([sys.executable, "-m", "pimlab.cli", *args], cwd=workdir, env=env, **kw)


@pytest.fixture
def stack(tmp_path):
    shard = LocalShard(replicas=3, synchronous=1)
    proxies, server = [], None
    try:
        for pod in shard.members:
            shard.start(pod)
        shard.converge(POLICY, lambda r: r.decision.phase == "Ready", timeout=90)
        primary, readonly = ServiceProxy(shard, "primary"), ServiceProxy(shard, "secondary")
        proxies += [primary, readonly]
        creds = tmp_path / "credentials" / "shard-00-credentials"
        creds.mkdir(parents=True)
        (creds / "username").write_text("pim")
        (creds / "password").write_text(shard.password)
        shard_map = {"version": 1, "slotCount": 1024, "shards": [{
            "name": "shard-00", "ordinal": 0, "engine": "postgres", "slots": {"start": 0, "end": 1023},
            "primary": {"host": "127.0.0.1", "port": primary.port},
            "readonly": {"host": "127.0.0.1", "port": readonly.port},
            "database": "pim", "credentialsSecret": "shard-00-credentials"}]}
        (tmp_path / "shard-map.json").write_text(json.dumps(shard_map))
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("PIM_")},
               "PIM_SHARD_MAP_FILE": str(tmp_path / "shard-map.json"), "PIM_DATA_DIR": str(tmp_path / "data"),
               "PIM_SHARD_CREDENTIALS_DIR": str(tmp_path / "credentials"), "PIM_RATE_LIMIT_RPS": "1000",
               "PIM_RATE_LIMIT_BURST": "2000", "PIM_DB_WRITE_TIMEOUT_SECONDS": str(WRITE_TIMEOUT)}
        assert _cli(tmp_path, env, "seed", "--patients", "5").wait(120) == 0
        port = free_ports(1)[0]
        log = open(tmp_path / "server.log", "ab")
        server = _cli(tmp_path, env, "serve", "--service", "all", "--port", str(port), stdout=log, stderr=log)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        settings = replace(load_settings(), dev_issuer_key_file=tmp_path / "data" / "dev-issuer.pem")
        yield shard, url, lambda persona, user: issue_dev_token(settings, persona, user), tmp_path
    finally:
        if server is not None:
            server.terminate()
            server.wait(20)
        for proxy in proxies:
            proxy.close()
        shard.close()


def booking(patient_id: str) -> dict:
    return {"patient_id": patient_id, "provider_id": "prv-0001", "facility_id": "fac-001",
            "scheduled_for": "2025-03-01T09:30:00Z", "reason": "follow-up visit"}


def test_writes_during_a_failover_get_503_with_retry_after_never_500(stack):
    shard, url, token, _ = stack
    admin = {"Authorization": f"Bearer {token('admin', 'admin-1')}"}
    patients = []
    for c in "ABC":
        resp = httpx.post(url + "/patients", headers=admin, timeout=10,
                          json={"pseudonym": f"Pg Person {c}", "birth_year": 1980, "sex": "F"})
        assert resp.status_code == 201, resp.text
        patients.append(resp.json()["patient_id"])
    resp = httpx.post(url + "/encounters", json=booking(patients[0]), timeout=10,
                      headers={"Authorization": f"Bearer {token('clinician', 'prv-0001')}"})
    assert resp.status_code == 202, resp.text
    tracking = resp.json()["tracking_id"]
    got = httpx.get(url + f"/encounters/{tracking}", headers=admin, timeout=10)
    assert got.status_code == 200 and got.json()["patient_id"] == patients[0]

    results: list[tuple[int, float, str | None, str | None]] = []
    stop = threading.Event()

    def writer(n: int):
        headers = {"Authorization": f"Bearer {token('clinician', 'prv-0001')}"}
        with httpx.Client(base_url=url, timeout=30, headers=headers) as client:
            i = 0
            while not stop.is_set():
                started = time.monotonic()
                resp = client.post("/encounters", json=booking(patients[(n + i) % 3]),
                                   headers={"Idempotency-Key": f"w{n}-{i}"})
                tid = resp.json().get("tracking_id") if resp.status_code == 202 else None
                results.append((resp.status_code, time.monotonic() - started, resp.headers.get("Retry-After"), tid))
                i += 1
                time.sleep(0.02)

    def controller():
        while not stop.is_set():
            shard.step(POLICY)
            time.sleep(0.25)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(2)] + [threading.Thread(target=controller)]
    for t in threads:
        t.start()
    try:
        time.sleep(1.5)
        old = shard.primary()
        shard.kill9(old)
        deadline = time.monotonic() + 60
        while not shard.failovers and time.monotonic() < deadline:
            time.sleep(0.2)
        assert shard.failovers, "no failover"
        time.sleep(2)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    codes = Counter(code for code, *_ in results)
    assert set(codes) <= {202, 503}, codes
    assert codes[503] >= 1 and codes[202] >= 10, codes
    assert all(retry for code, _, retry, _ in results if code == 503), "a 503 without Retry-After"
    assert max(seconds for _, seconds, *_ in results) < BOUND, max(seconds for _, seconds, *_ in results)
    acked = {tid for code, _, _, tid in results if code == 202} | {tracking}
    new = shard.primary()
    assert new != old
    with shard.connect(new) as conn:
        stored = {row[0] for row in conn.execute("SELECT encounter_id FROM encounters")}
    assert acked <= stored, f"{len(acked - stored)} acknowledged bookings lost"
    verify = httpx.post(url + "/admin/audit/verify", timeout=30,
                        headers={"Authorization": f"Bearer {token('sre', 'sre-1')}"})
    assert verify.status_code == 200 and verify.json()["ok"], verify.text


def test_writes_with_every_standby_gone_are_503_not_acknowledged(stack):
    shard, url, token, _ = stack
    admin = {"Authorization": f"Bearer {token('admin', 'admin-1')}"}
    resp = httpx.post(url + "/patients", headers=admin, timeout=10,
                      json={"pseudonym": "Lonely Primary", "birth_year": 1970, "sex": "M"})
    assert resp.status_code == 201
    patient = resp.json()["patient_id"]
    shard.driver.fence("shard-00-1")
    shard.driver.fence("shard-00-2")
    started = time.monotonic()
    resp = httpx.post(url + "/encounters", json=booking(patient), timeout=30,
                      headers={"Authorization": f"Bearer {token('clinician', 'prv-0001')}", "Idempotency-Key": "lonely-1"})
    elapsed = time.monotonic() - started
    assert resp.status_code == 503 and resp.headers.get("Retry-After"), resp.text
    assert resp.json()["code"] == "shard_unavailable" and elapsed < BOUND
    shard.driver.follow("shard-00-1", "shard-00-0")
    retry = httpx.post(url + "/encounters", json=booking(patient), timeout=30,
                       headers={"Authorization": f"Bearer {token('clinician', 'prv-0001')}", "Idempotency-Key": "lonely-1"})
    assert retry.status_code == 202, retry.text


def test_the_write_engine_never_connects_to_a_standby(stack):
    """A pooled connection to a demoted primary would fail every write after the failover: the
    primary's URL refuses a server in recovery at connect time (libpq target_session_attrs)."""
    import sqlalchemy as sa

    from api_services.engines import postgres_url
    from api_services.sharding import ShardEntry

    shard, _, _, workdir = stack
    standby = next(pod for pod in shard.members if pod != shard.primary())

    def engine(pod: str, readonly: bool = False):
        host, port = shard.url(pod).split(":")
        entry = ShardEntry(name="shard-00", ordinal=0, engine="postgres", slots={"start": 0, "end": 1023},
                      primary={"host": host, "port": int(port)}, readonly={"host": host, "port": int(port)},
                      credentialsSecret="shard-00-credentials")
        return sa.create_engine(postgres_url(entry, workdir / "credentials", readonly=readonly))

    with engine(shard.primary()).connect() as conn:
        assert conn.execute(sa.text("SELECT pg_is_in_recovery()")).scalar() is False
    with pytest.raises(sa.exc.OperationalError, match="session is read-only"):
        engine(standby).connect()
    with engine(standby, readonly=True).connect() as conn:  # the -readonly Service takes any
        assert conn.execute(sa.text("SELECT pg_is_in_recovery()")).scalar() is True


def test_concurrent_bookings_share_quorum_commits_and_a_refused_one_takes_only_itself_out(stack):
    """Group commit on PostgreSQL: concurrent bookings are made durable by shared COMMITs (each
    acknowledged by the synchronous standby), a booking refused inside a batch (unknown patient)
    writes nothing, and every acknowledged one is on the primary with the audit chain intact."""
    shard, url, token, _ = stack
    admin = {"Authorization": f"Bearer {token('admin', 'admin-1')}"}
    patient = httpx.post(url + "/patients", headers=admin, timeout=10,
                         json={"pseudonym": "Grouped Pg", "birth_year": 1975, "sex": "M"}).json()["patient_id"]
    headers = {"Authorization": f"Bearer {token('clinician', 'prv-0001')}"}
    unknown = "pat-" + "0" * 32
    answers: list[tuple[int, str | None]] = []

    def writer(n: int):
        with httpx.Client(base_url=url, timeout=30, headers=headers) as client:
            for i in range(15):
                resp = client.post("/encounters", json=booking(unknown if i == 7 else patient))
                answers.append((resp.status_code, resp.json().get("tracking_id")))

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    codes = Counter(code for code, _ in answers)
    assert codes == {202: 12 * 14, 422: 12}, codes
    metrics = httpx.get(url + "/metrics", timeout=10).text
    count = sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                if line.startswith("pim_group_commit_writes_count"))
    total = sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                if line.startswith("pim_group_commit_writes_sum"))
    assert total >= 12 * 15 and count < total, f"{total} writes in {count} commits: none grouped"
    with shard.connect(shard.primary()) as conn:
        stored = {row[0] for row in conn.execute("SELECT encounter_id FROM encounters WHERE patient_id = %s",
                                                 (patient,))}
        strays = conn.execute("SELECT count(*) FROM encounters WHERE patient_id = %s", (unknown,)).fetchone()[0]
    assert {tid for code, tid in answers if code == 202} <= stored
    assert strays == 0
    verify = httpx.post(url + "/admin/audit/verify", timeout=30,
                        headers={"Authorization": f"Bearer {token('sre', 'sre-1')}"})
    assert verify.status_code == 200 and verify.json()["ok"], verify.text

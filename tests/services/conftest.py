"""Real servers for the service tests: `pimlab serve` subprocesses on 127.0.0.1 over SQLite files."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import httpx
import pytest

from api_services.auth import issue_dev_token
from api_services.config import load_settings

PYTHON = sys.executable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_cli(workdir: Path, *args: str, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if k not in ("PIM_DATA_DIR", "PIM_SHARD_MAP_FILE")}
    full_env.update(env or {})
    proc = subprocess.run([PYTHON, "-m", "pimlab.cli", *args], cwd=workdir, env=full_env, capture_output=True,
                          text=True, timeout=120)
    if check and proc.returncode != 0:
        raise AssertionError(f"pimlab {' '.join(args)} failed: {proc.stdout[-2000:]} {proc.stderr[-2000:]}")
    return proc


@dataclass
class Server:
    workdir: Path
    port: int
    proc: subprocess.Popen
    log_path: Path
    env: dict

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def data_dir(self) -> Path:
        return self.workdir / ".lab" / "data"

    def token(self, persona: str, user: str) -> str:
        settings = replace(load_settings(), dev_issuer_key_file=self.data_dir / "dev-issuer.pem")
        return issue_dev_token(settings, persona, user)

    def client(self, persona: str | None = None, user: str = "u-1") -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.token(persona, user)}"} if persona else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=15)

    def log_lines(self) -> list[dict]:
        out = []
        for line in self.log_path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
        return out

    def stop(self, sig=signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_server(workdir: Path, service: str = "all", env: dict | None = None, port: int | None = None,
                 wait_ready: bool = True) -> Server:
    workdir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    log_path = workdir / f"server-{service}-{port}.log"
    full_env = {**os.environ, "PIM_RATE_LIMIT_RPS": "1000", "PIM_RATE_LIMIT_BURST": "2000",
                "PIM_WORKER_POLL_SECONDS": "0.1", **(env or {})}
    for key in ("PIM_DATA_DIR", "OTEL_EXPORTER_OTLP_ENDPOINT", "PIM_OTLP_ENDPOINT"):
        if key not in (env or {}):
            full_env.pop(key, None)
    if "PIM_SHARD_MAP_FILE" not in (env or {}):
        full_env.pop("PIM_SHARD_MAP_FILE", None)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([PYTHON, "-m", "pimlab.cli", "serve", "--service", service, "--port", str(port)],
                                cwd=workdir, env=full_env, stdout=log, stderr=subprocess.STDOUT)
    server = Server(workdir, port, proc, log_path, full_env)
    deadline = time.monotonic() + 30
    path = "/readyz" if wait_ready else "/healthz"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited: {log_path.read_text()[-3000:]}")
        try:
            if httpx.get(server.url + path, timeout=1).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    server.stop()
    raise AssertionError(f"server not ready: {log_path.read_text()[-3000:]}")


@pytest.fixture(scope="session")
def server(tmp_path_factory) -> Server:
    workdir = tmp_path_factory.mktemp("lab")
    run_cli(workdir, "seed", "--patients", "30")
    srv = start_server(workdir)
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def patients(server) -> list[str]:
    """Three patients registered through the API, one per shard if the hash allows."""
    with server.client("admin", "admin-1") as admin:
        ids = []
        for i in range(6):
            resp = admin.post("/patients", json={"pseudonym": f"Test Person {chr(65 + i)}", "birth_year": 1980 + i,
                                                 "sex": "F"})
            assert resp.status_code == 201, resp.text
            ids.append(resp.json()["patient_id"])
    return ids


def booking(patient_id: str, reason: str = "follow-up visit") -> dict:
    return {"patient_id": patient_id, "provider_id": "prv-0001", "facility_id": "fac-001",
            "scheduled_for": "2025-03-01T09:30:00Z", "reason": reason}

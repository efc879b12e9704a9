"""A seeded `pimlab serve --service all` for the booking benchmarks (bench_booking.py and
profile_booking.py start it the same way), and the pre-encoded booking requests they send."""

from __future__ import annotations

import json
import os
import subprocess
import tarfile
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from tests.services.conftest import Server, run_cli, start_server

ROOT = Path(__file__).resolve().parents[2]
PATIENTS = 90
#: No rate limit (the load is the point) and no per-request INFO log lines.
ENV = {"PIM_RATE_LIMIT_RPS": "100000", "PIM_RATE_LIMIT_BURST": "100000", "PIM_LOG_LEVEL": "WARNING"}
SERVER_CORE, CLIENT_CORE = (0, 1) if (os.cpu_count() or 1) >= 2 else (None, None)


def pin(pid: int, core: int | None) -> None:
    """Pin every thread of a process (threads it starts later inherit the mask)."""
    if core is None:
        return
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            os.sched_setaffinity(int(tid), {core})
        except OSError:
            pass


def code_tree(ref: str | None) -> Path | None:
    """`ref`'s files in a temporary directory (git archive), or None for this tree."""
    if ref is None:
        return None
    dest = Path(tempfile.mkdtemp(prefix="pim-bench-base-"))
    archive = dest / "src.tar"
    subprocess.run(["git", "-C", str(ROOT), "archive", "-o", str(archive), ref], check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(dest, filter="data")
    archive.unlink()
    return dest


def http_request(method: str, path: str, token: str | None = None, body: dict | None = None) -> str:
    data = json.dumps(body) if body is not None else ""
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
    if token:
        lines.append(f"Authorization: Bearer {token}")
    if body is not None:
        lines += ["Content-Type: application/json", f"Content-Length: {len(data.encode())}"]
    return "\r\n".join(lines) + "\r\n\r\n" + data


def bookings(server: Server, count: int = 2 * PATIENTS, reason: str = "benchmark visit") -> list[str]:
    """`count` POST /encounters requests by one clinician over the seeded patients, providers and
    facilities (no Idempotency-Key: the write is the booking's own transaction)."""
    from api_services.seed import seeded_patient_id

    token = server.token("clinician", "prv-0001")
    return [http_request("POST", "/encounters", token, {
        "patient_id": seeded_patient_id(42, i % PATIENTS), "provider_id": f"prv-{i % 20 + 1:04d}",
        "facility_id": f"fac-{i % 5 + 1:03d}", "scheduled_for": "2025-06-01T09:00:00Z",
        "reason": reason}) for i in range(count)]


@contextmanager
def seeded_server(tree: Path | None = None, label: str = "bench") -> Iterator[tuple[Server, Path]]:
    """Seed `PATIENTS` patients into a fresh data directory and serve it, running `tree`'s code
    (a `code_tree` checkout) or this tree's; pinned to the server core. Yields (server, workdir)."""
    workdir = Path(tempfile.mkdtemp(prefix=f"pim-{label}-"))
    env = dict(ENV, **({"PYTHONPATH": str(tree)} if tree is not None else {}))
    run_cli(workdir, "seed", "--patients", str(PATIENTS), env=env)
    server = start_server(workdir, env=env)
    pin(server.proc.pid, SERVER_CORE)
    try:
        yield server, workdir
    finally:
        server.stop()

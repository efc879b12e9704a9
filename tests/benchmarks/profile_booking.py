"""Where a booking's server CPU goes: py-spy samples `pimlab serve` under an open-model booking load.

    python tests/benchmarks/profile_booking.py [--rate 300] [--seconds 10] [--baseline main]

Needs py-spy (`pip install py-spy`; a development tool, not a dependency). Samples only the thread
holding the GIL (so CPU, not waiting). Prints the share of samples per component (by the file
the innermost Python function lives in: SQLite's own C time shows as SQLAlchemy's `do_execute`/
`do_commit`) and the top functions by own samples. `--baseline REF` profiles that git revision's code instead.
"""

from __future__ import annotations

import argparse
import collections
import json
import shutil
import subprocess
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.benchmarks.bench_booking import drive, wait_idle  # noqa: E402
from tests.benchmarks.seeded import SERVER_CORE, bookings, code_tree, pin, seeded_server  # noqa: E402

COMPONENTS = (("sqlalchemy", "SQLAlchemy"), ("opentelemetry", "OpenTelemetry"), ("prometheus_client", "metrics"),
              ("uvicorn", "uvicorn"), ("h11", "h11"), ("httptools", "httptools"), ("starlette", "Starlette"),
              ("fastapi", "FastAPI"), ("pydantic", "pydantic"), ("anyio", "threadpool hand-off"),
              ("concurrent/futures", "threadpool hand-off"), ("asyncio", "event loop"), ("uvloop", "event loop"),
              ("jwt", "JWT"), ("logging", "logging"), ("json", "json"), ("api_services", "api_services"),
              ("threading", "threads"))


def component(frame: str) -> str:
    path = frame.rpartition("(")[2].rpartition(":")[0]
    path = path.split("site-packages/", 1)[-1].split("/python3.11/", 1)[-1].replace("<frozen ", "")
    for needle, name in COMPONENTS:
        if path.startswith((f"{needle}/", f"{needle}.py")) or f"/{needle}/" in path:
            return name
    return "other"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=300.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--baseline", default=None)
    args = parser.parse_args()
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    with seeded_server(code_tree(args.baseline), "profile") as (server, workdir):
        requests = bookings(server, reason="profiled visit")
        drive(server.port, server.proc.pid, 100, 2.0, requests, workdir)
        pin(server.proc.pid, SERVER_CORE)
        wait_idle(server.url)
        out = workdir / "profile.txt"
        rec = subprocess.Popen([spy, "record", "--pid", str(server.proc.pid), "--format", "raw", "--rate", "250", "--gil", "--full-filenames",
                                "--duration", str(int(args.seconds)), "--output", str(out), "--nonblocking"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        result: dict = {}
        t = threading.Thread(target=lambda: result.update(
            drive(server.port, server.proc.pid, args.rate, args.seconds, requests, workdir)))
        t.start()
        t.join()
        rec.wait(timeout=60)
    by_component: collections.Counter = collections.Counter()
    by_function: collections.Counter = collections.Counter()
    total = 0
    for line in out.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        n = int(count)
        total += n
        leaf = frames[-1]
        by_component[component(leaf)] += n
        func, _, where = leaf.rpartition(" (")
        by_function[f"{func} ({where.split('site-packages/', 1)[-1].split('/python3.11/', 1)[-1]}"] += n
    print(json.dumps({"step": result, "samples": total, "raw_profile": str(out)}))
    print("share of samples by component:")
    for name, n in by_component.most_common():
        print(f"  {name:22s} {100 * n / total:5.1f} %")
    print("top functions (own samples):")
    for name, n in by_function.most_common(15):
        print(f"  {100 * n / total:5.1f} %  {name}")


if __name__ == "__main__":
    main()

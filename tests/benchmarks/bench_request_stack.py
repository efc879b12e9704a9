"""The per-request stack, one part at a time: `python tests/benchmarks/bench_request_stack.py [--baseline REF]`.

CPU microseconds per call, in-process (no sockets), for each part a request pays for: a bare
FastAPI GET through ASGI (the floor), the same app behind EdgeMiddleware (request id, server
span, RED metrics, access log), the server span alone, the RED metrics alone, one access-log
line formatted, and authentication of an already-verified token; and the background work per
event: the outbox relay and the projection, each in batches of 30 (what a worker step moves at
about 1,000 bookings/s over 3 shards) and 500 (a catch-up), on a SQLite shard with
`synchronous=FULL` (CPU only: the fsync's wait is not CPU). `--baseline REF` runs the same
measurements on that git revision's code in a child process, for before/after in one run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
N = 4000


def per_call_us(fn, n: int = N) -> float:
    fn()
    t0 = time.process_time()
    for _ in range(n):
        fn()
    return round((time.process_time() - t0) / n * 1e6, 1)


def asgi_get(app, path: str, headers: list | None = None):
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
             "headers": [(b"host", b"127.0.0.1")] + (headers or []), "client": ("127.0.0.1", 1),
             "server": ("127.0.0.1", 80)}

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(_message):
        pass

    loop = asyncio.new_event_loop()

    def call():
        loop.run_until_complete(app(dict(scope), receive, send))

    return call


def pipeline_per_event_us(tmp: Path, batch: int, events: int = 1500) -> dict:
    """CPU microseconds per event of the relay and of the projection, `batch` events per step,
    over `events` booking events written through the audited write path."""
    from api_services.audit import Actor, record_write
    from api_services.engines import sqlite_engine
    from api_services.tables import metadata
    from api_services.workers import project_once, relay_once

    plain = sqlite_engine(str(tmp / f"pipeline-{batch}.db"))
    metadata.create_all(plain)
    try:  # what a served SQLite shard's workers write through (a baseline from before it: the engine)
        from api_services.group_commit import GroupCommitWrites

        engine = GroupCommitWrites(plain, "s")
    except ImportError:
        engine = plain
    actor = Actor(user_id="u-1", persona="clinician", request_id="r-1")
    with plain.begin() as conn:
        for i in range(events):
            record_write(conn, actor, action="encounter.book", entity="encounter", entity_id=f"enc-{i}", version=1,
                         before=None, after={"encounter_id": f"enc-{i}", "status": "booked"},
                         event_type="encounter.booked")
    out = {}
    for name, step in (("relay", lambda: relay_once(engine, "s", "relay:bench:1", batch)),
                       ("projection", lambda: project_once(engine, "s", batch))):
        t0, moved = time.process_time(), 0
        while (n := step()):
            moved += n
        assert moved == events, (name, moved)
        out[f"{name}_per_event_batch_{batch}"] = round((time.process_time() - t0) / moved * 1e6, 1)
    engine.dispose()
    return out


def measure() -> dict:
    from fastapi import FastAPI

    from api_services.auth import Authenticator, issue_dev_token
    from api_services.config import load_settings
    from api_services.edge import EdgeMiddleware
    from api_services.telemetry import JsonFormatter, observe_request, setup_tracing, tracer

    tmp = Path(tempfile.mkdtemp(prefix="pim-stack-"))
    settings = replace(load_settings(), dev_issuer_key_file=tmp / "k.pem")
    setup_tracing("bench", None)
    logging.getLogger("pim.access").disabled = True  # formatting is measured on its own below

    import inspect

    # FastAPI's own OpenTelemetry integration stays off in the bare app (no SDK provider in a
    # real bare process turns it on): the floor is FastAPI alone.
    quiet = ({"telemetry": {"tracing": False, "metrics": False, "logs": False, "operation_spans": False}}
             if "telemetry" in inspect.signature(FastAPI.__init__).parameters else {})

    def bare_app():
        app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None, **quiet)

        @app.get("/healthz")
        async def healthz():
            return {"status": "ok", "service": "bench"}

        return app

    floor = bare_app()
    edged = EdgeMiddleware(bare_app(), service="bench", max_body_bytes=65536)
    from api_services.app import build_app

    full = build_app("all", replace(settings, data_dir=tmp, shard_map_file=tmp / "map.json", shard_map_explicit=False))

    def span():
        with tracer().start_as_current_span("GET", attributes={"pim.shard": "s"}):
            pass

    record = logging.LogRecord("pim.access", logging.INFO, __file__, 1, "request", None, None)
    record.__dict__.update(method="POST", route="/encounters", status=202, duration_ms=3.2, service="all")
    formatter = JsonFormatter()
    auth = Authenticator(settings)
    header = f"Bearer {issue_dev_token(settings, 'clinician', 'prv-0001')}"
    out = {
        "floor_bare_fastapi_get": per_call_us(asgi_get(floor, "/healthz")),
        "bare_get_behind_edge_middleware": per_call_us(asgi_get(edged, "/healthz")),
        "service_healthz_full_app": per_call_us(asgi_get(full, "/healthz")),
        "server_span": per_call_us(span),
        "red_metrics": per_call_us(lambda: observe_request("all", "/encounters", "POST", "clinician", "shard-00",
                                                           202, 0.003, "0" * 32)),
        "access_log_format": per_call_us(lambda: formatter.format(record)),
        "auth_cached_token": per_call_us(lambda: auth.authenticate(header)),
    }
    full.state.runtime.engines.dispose()
    for batch in (30, 500):
        out.update(pipeline_per_event_us(tmp, batch))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default=None)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure()))
        return
    sys.path.insert(0, str(ROOT))
    from tests.benchmarks.bench_booking import code_tree

    runs = {}
    for label, tree in [("current", None)] + ([(f"baseline:{args.baseline}", code_tree(args.baseline))]
                                              if args.baseline else []):
        env = {**os.environ, "PYTHONPATH": str(tree or ROOT), "PIM_LOG_LEVEL": "WARNING"}
        env.pop("PIM_OTLP_ENDPOINT", None)
        env.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
        proc = subprocess.run([sys.executable, __file__, "--child"], env=env, capture_output=True, text=True,
                              cwd=tempfile.mkdtemp(), timeout=600)
        if proc.returncode != 0:
            raise SystemExit(proc.stderr[-3000:])
        runs[label] = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"{'CPU us per call':34s}" + "".join(f"{label:>18s}" for label in runs))
    for key in runs["current"]:
        print(f"{key:34s}" + "".join(f"{run.get(key, float('nan')):>18}" for run in runs.values()))
    floor = runs["current"]["floor_bare_fastapi_get"]
    print(f"healthz/floor (current): {runs['current']['service_healthz_full_app'] / floor:.2f}x  load avg "
          f"{os.getloadavg()[0]:.1f}")
    print(json.dumps(runs))


if __name__ == "__main__":
    main()

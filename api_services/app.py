"""Builds the FastAPI app for one service, or for all of them in one process (the embedded default)."""

from __future__ import annotations

import inspect
import logging
import tempfile
import time
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

import sqlalchemy as sa
from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client.exposition import choose_encoder
from pydantic import BaseModel

from api_services import errors, faults, gateway
from api_services.catalog import NAMES, WORKERS
from api_services.config import Settings, load_settings
from api_services.edge import EdgeMiddleware
from api_services.routers import admin, billing, encounters, patients
from api_services.runtime import Runtime
from api_services.telemetry import PIPELINE, REGISTRY, setup_tracing
from api_services.workers import describe_failure, pipeline_counts, reason_kind, start_workers

log = logging.getLogger("pim.app")
API_TITLE = "PIM SRE Lab healthcare API"
API_VERSION = "1.0.0"
#: Which router each routed component serves.
ROUTERS = {"patient": patients.router, "encounter": encounters.router, "billing": billing.router,
           "admin": admin.router}


#: FastAPI (0.13x+) opens its own OpenTelemetry server span, operation spans and metrics whenever
#: an SDK tracer provider is installed: a second span per request on top of EdgeMiddleware's.
_NO_NATIVE_TELEMETRY = ({"telemetry": {"tracing": False, "metrics": False, "logs": False, "operation_spans": False}}
                        if "telemetry" in inspect.signature(FastAPI.__init__).parameters else {})


class Health(BaseModel):
    status: str
    service: str


class Readiness(BaseModel):
    status: str
    service: str
    shard_map_version: int
    checks: dict[str, str]


def _readiness(rt: Runtime, cache: dict) -> tuple[str, dict[str, str]]:
    """Per shard: its store answers `SELECT 1`; per worker role and shard: its last step succeeded.

    `ready` when all hold; `degraded` (still 200: one bad shard must not take the pod, hence every
    healthy shard, out of service) when at least one shard is healthy; `not_ready` (503) when no
    shard is, or a worker supervisor is dead. Cached for a second."""
    now = time.monotonic()
    if now - cache.get("at", 0) < 1.0:
        return cache["status"], cache["checks"]
    checks: dict[str, str] = {}
    healthy_shards = 0
    names = rt.shard_names()
    if rt.engines is not None:
        for name in names:
            try:
                with rt.engines.read(name).connect() as conn:
                    conn.execute(sa.text("SELECT 1"))
                checks[name] = "ok"
                healthy_shards += 1
            except errors.ApiError as exc:  # reported, not raised: readiness is a report
                checks[name] = f"unavailable: {exc.message}"
            except Exception as exc:
                checks[name] = f"unavailable: {describe_failure(exc)}"
    states = rt.worker_health.snapshot()
    supervisors_alive = True
    for loop in rt.workers:
        alive = loop.is_alive()
        supervisors_alive &= alive
        failing = []
        for shard in names:
            state = states.get((loop.name, shard))
            if state is None:
                checks[f"{loop.name}:{shard}"] = "starting"
            elif state[0]:
                checks[f"{loop.name}:{shard}"] = "ok"
            else:
                since = time.strftime("%H:%M:%SZ", time.gmtime(state[2]))
                checks[f"{loop.name}:{shard}"] = f"failing since {since}: {state[1]}"
                failing.append(shard)
        checks[loop.name] = "stopped" if not alive else ("ok" if not failing else "failing on " + ", ".join(failing))
    if rt.engines is not None and healthy_shards == 0 or not supervisors_alive:
        status = "not_ready"
    elif all(v in ("ok", "starting") for v in checks.values()):
        status = "ready"
    else:
        status = "degraded"
    cache.update(at=now, status=status, checks=checks)
    return status, checks


def _pipeline_source(rt: Runtime):
    """What the scrape-time pipeline gauges read: every shard's counts, straight from its store."""
    def source():
        for name in rt.shard_names():
            try:
                pending, lag = pipeline_counts(rt.engines.reporting(name))
                yield name, pending, lag, True, ""
            except errors.ApiError as exc:
                yield name, None, None, False, reason_kind(exc.message)
            except Exception as exc:
                yield name, None, None, False, reason_kind(describe_failure(exc))

    return source


def build_app(service: str = "all", settings: Settings | None = None) -> FastAPI:
    if service not in NAMES + ("all",):
        raise ValueError(f"unknown service {service!r}")
    settings = settings or load_settings()
    setup_tracing(service, settings.otlp_endpoint)
    gateway_proxy = service == "gateway"
    rt = Runtime(settings, service, with_db=not gateway_proxy)
    hosted = set(ROUTERS) if service == "all" else ({service} & set(ROUTERS))
    roles = WORKERS if service == "all" else ({service} & WORKERS)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        rt.workers = start_workers(rt, roles)
        if rt.engines is not None and (roles or service == "all"):
            PIPELINE.source = _pipeline_source(rt)
        log.info("service started", extra={"service": service, "shard_map_version": rt.shard_map.version,
                                           "shards": rt.shard_names()})
        try:
            yield
        finally:
            for loop in rt.workers:
                loop.stop()
            for loop in rt.workers:
                loop.join(timeout=5)
            if gateway_proxy:
                await _app.state.proxy_client.aclose()
            if rt.engines is not None:
                rt.engines.dispose()

    # Fault injection for SLO drills exists only where PIM_FAULTS_FILE is set (api_services/faults.py).
    injected = [Depends(faults.dependency(faults.Faults(settings.faults_file)))] if settings.faults_file else []
    app = FastAPI(title=API_TITLE, version=API_VERSION, lifespan=lifespan, dependencies=injected, **_NO_NATIVE_TELEMETRY,
                  description="Synthetic healthcare API run by the PIM SRE Lab. All data is synthetic.",
                  docs_url=None, redoc_url=None, openapi_url=None if gateway_proxy else "/openapi.json")
    app.state.runtime = rt
    errors.install(app)
    route_label = None
    if gateway_proxy:
        route_label = gateway.route_label
    app.add_middleware(EdgeMiddleware, service=service, max_body_bytes=settings.max_body_bytes,
                       route_label=route_label)
    ready_cache: dict = {}

    @app.get("/healthz", response_model=Health, tags=["health"])
    async def healthz():
        """Liveness: the process answers. Cheap on purpose (also the benchmark's trivial endpoint)."""
        return {"status": "ok", "service": service}

    @app.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}}, tags=["health"])
    def readyz():
        """Readiness: `ready`, `degraded` (some shard or worker unhealthy: named, with the cause) or
        `not_ready` (503: no shard usable). One bad shard keeps the others in service."""
        status, checks = _readiness(rt, ready_cache)
        body = {"status": status, "service": service, "shard_map_version": rt.shard_map.version, "checks": checks}
        return JSONResponse(body, status_code=503 if status == "not_ready" else 200)

    @app.get("/metrics", include_in_schema=False)
    async def metrics(request: Request):
        encoder, content_type = choose_encoder(request.headers.get("accept", ""))
        return Response(encoder(REGISTRY), media_type=content_type)

    for name in sorted(hosted):
        app.include_router(ROUTERS[name])
    if gateway_proxy:
        gateway.install(app, rt)  # last: its catch-all route must not shadow /healthz and friends
    return app


def openapi_document() -> dict:
    """The public API (what the gateway serves), independent of any data directory."""
    with tempfile.TemporaryDirectory() as tmp:
        settings = load_settings()
        settings = replace(settings, data_dir=Path(tmp), shard_map_file=Path(tmp) / "shard-map.json",
                           shard_map_explicit=False, dev_issuer_key_file=Path(tmp) / "k.pem")
        app = build_app("all", settings)
        doc = app.openapi()
        app.state.runtime.engines.dispose()
    return doc

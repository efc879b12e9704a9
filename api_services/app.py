"""Builds the FastAPI app for one service, or for all of them in one process (the embedded default)."""

from __future__ import annotations

import logging
import time
from contextlib import asynccontextmanager

import sqlalchemy as sa
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client.exposition import choose_encoder
from pydantic import BaseModel

from api_services import errors
from api_services.catalog import NAMES, WORKERS
from api_services.config import Settings, load_settings
from api_services.edge import EdgeMiddleware
from api_services.routers import admin, billing, encounters, patients
from api_services.runtime import Runtime
from api_services.telemetry import REGISTRY, setup_tracing

log = logging.getLogger("pim.app")
API_TITLE = "PIM SRE Lab healthcare API"
API_VERSION = "1.0.0"
#: Which router each routed component serves.
ROUTERS = {"patient": patients.router, "encounter": encounters.router, "billing": billing.router,
           "admin": admin.router}


class Health(BaseModel):
    status: str
    service: str


class Readiness(BaseModel):
    status: str
    service: str
    shard_map_version: int
    checks: dict[str, str]


def _readiness(rt: Runtime, cache: dict) -> tuple[bool, dict[str, str]]:
    """Every shard answers `SELECT 1` and every worker loop is alive; cached for a second."""
    now = time.monotonic()
    if now - cache.get("at", 0) < 1.0:
        return cache["ok"], cache["checks"]
    checks: dict[str, str] = {}
    if rt.engines is not None:
        for name in rt.shard_names():
            try:
                with rt.engines.read(name).connect() as conn:
                    conn.execute(sa.text("SELECT 1"))
                checks[name] = "ok"
            except Exception as exc:  # reported, not raised: readiness is a report
                checks[name] = f"error: {type(exc).__name__}"
    for loop in rt.workers:
        checks[loop.name] = "ok" if loop.is_alive() else "stopped"
    ok = all(v == "ok" for v in checks.values())
    cache.update(at=now, ok=ok, checks=checks)
    return ok, checks


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
        from api_services.workers import start_workers

        rt.workers = start_workers(rt, roles)
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

    app = FastAPI(title=API_TITLE, version=API_VERSION, lifespan=lifespan,
                  description="Synthetic healthcare API run by the PIM SRE Lab. All data is synthetic.",
                  docs_url=None, redoc_url=None, openapi_url=None if gateway_proxy else "/openapi.json")
    app.state.runtime = rt
    errors.install(app)
    route_label = None
    if gateway_proxy:
        from api_services import gateway

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
        """Readiness: shard databases reachable, worker loops alive."""
        ok, checks = _readiness(rt, ready_cache)
        body = {"status": "ready" if ok else "not_ready", "service": service,
                "shard_map_version": rt.shard_map.version, "checks": checks}
        return JSONResponse(body, status_code=200 if ok else 503)

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
    import tempfile
    from dataclasses import replace

    with tempfile.TemporaryDirectory() as tmp:
        settings = load_settings()
        from pathlib import Path

        settings = replace(settings, data_dir=Path(tmp), shard_map_file=Path(tmp) / "shard-map.json",
                           shard_map_explicit=False, dev_issuer_key_file=Path(tmp) / "k.pem")
        app = build_app("all", settings)
        doc = app.openapi()
        app.state.runtime.engines.dispose()
    return doc

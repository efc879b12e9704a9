"""Gateway in proxy mode: authenticate, rate limit, resolve the shard, forward to the owning service.

When every service runs in one process (`all`) the gateway's concerns run in-process through the
same middleware and dependencies and no hop is made; this module is only the separate-pod case.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import Response

from api_services.edge import inject_trace_headers
from api_services.errors import NotFound, Unavailable
from api_services.telemetry import current_context, tracer

PREFIXES = [("/patients", "patient"), ("/encounters", "encounter"), ("/providers", "encounter"),
            ("/facilities", "encounter"), ("/claims", "billing"), ("/kpis", "billing"), ("/admin", "admin")]
FORWARDED = ("authorization", "content-type", "idempotency-key", "accept")
_IDS = re.compile(r"/(pat-[0-9a-f]{32}|enc-[0-9]{4}-[0-9a-f]{32}|clm-[0-9]{4}-[0-9a-f]{32})")
OPENAPI_FILE = Path(__file__).with_name("openapi.json")


def route_label(path: str) -> str:
    """A bounded metric label for a proxied path: ids replaced by `{id}`."""
    for prefix, _ in PREFIXES:
        if path == prefix or path.startswith(prefix + "/"):
            return _IDS.sub("/{id}", path)[:80]
    return "unmatched"


def _service_for(path: str) -> str | None:
    for prefix, service in PREFIXES:
        if path == prefix or path.startswith(prefix + "/"):
            return service
    return None


def _tag_shard(rt, path: str, body: bytes) -> None:
    """Resolve the shard the same way the service will, so the gateway's metrics carry it."""
    match = _IDS.search(path)
    try:
        if match and match.group(1).startswith("pat-"):
            rt.route_patient(match.group(1))
        elif match:
            rt.route_id(match.group(1), "resource")
        elif body:
            data = json.loads(body)
            if isinstance(data, dict) and isinstance(data.get("patient_id"), str):
                rt.route_patient(data["patient_id"])
            elif isinstance(data, dict) and isinstance(data.get("encounter_id"), str):
                rt.route_id(data["encounter_id"], "encounter")
    except (ValueError, NotFound):
        pass


def install(app: FastAPI, rt) -> None:
    # Every connection a burst opened may stay pooled, and none is reused after 4 s idle: below the
    # services' keep-alive timeout (uvicorn: 5 s), so a request never goes out on a closing one.
    app.state.proxy_client = httpx.AsyncClient(timeout=httpx.Timeout(10.0, connect=2.0),
                                               limits=httpx.Limits(max_connections=200, max_keepalive_connections=200,
                                                                   keepalive_expiry=4.0))

    @app.get("/openapi.json", include_in_schema=False)
    def openapi():
        return Response(OPENAPI_FILE.read_bytes(), media_type="application/json")

    @app.api_route("/{path:path}", methods=["GET", "POST", "PATCH", "PUT", "DELETE"], include_in_schema=False)
    async def forward(path: str, request: Request):
        full = "/" + path
        service = _service_for(full)
        if service is None:
            raise NotFound("no such route", "not_found")
        base = rt.settings.service_urls.get(service)
        if not base:
            raise Unavailable(f"no URL configured for the {service} service", "service_unconfigured")
        who = rt.auth.authenticate(request.headers.get("authorization"))
        rt.rate_limit(who.user_id, who.persona)
        body = await request.body()
        _tag_shard(rt, full, body)
        headers = {k: v for k, v in request.headers.items() if k in FORWARDED}
        ctx = current_context()  # the service makes its own request id; the correlation id carries over
        headers["x-request-id"] = ctx.correlation_id or ctx.request_id
        with tracer().start_as_current_span(f"gateway.forward {service}", attributes={"pim.service": service}):
            inject_trace_headers(headers)
            try:
                upstream = await app.state.proxy_client.request(
                    request.method, base + full, params=request.query_params, content=body, headers=headers)
            except httpx.HTTPError as exc:
                # as retryable as a shard's 503: the service's pods are restarting or dropped out of
                # their Service while their shard fails over
                raise Unavailable(f"{service} service unreachable", "upstream_unavailable",
                                  headers={"Retry-After": "1"}) from exc
        passthrough = {k: v for k, v in upstream.headers.items()
                       if k.lower() in ("location", "retry-after", "idempotent-replayed")}
        # The service's body as it came (no decode and encode again): it is the service's JSON
        return Response(upstream.content, status_code=upstream.status_code, headers=passthrough,
                        media_type=upstream.headers.get("content-type"))

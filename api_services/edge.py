"""The ASGI edge every service shares: request id, server span, body limit, RED metrics, access log.

A plain ASGI middleware (not BaseHTTPMiddleware) so it costs little on the hot path. What it
refuses it refuses with the error types and body of api_services/errors.py.
"""

from __future__ import annotations

import logging
import re
import time
import uuid

from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from starlette.exceptions import HTTPException

from api_services.errors import ApiError, PayloadTooLarge, UnsupportedMediaType, error_response
from api_services.redaction import redact
from api_services.telemetry import RequestContext, bind_context, observe_request, reset_context, trace_ids, tracer

log = logging.getLogger("pim.access")
_RID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
_QUIET = {"/healthz", "/readyz", "/metrics"}
_WITH_BODY = {"POST", "PUT", "PATCH"}


class EdgeMiddleware:
    def __init__(self, app, service: str, max_body_bytes: int, route_label=None):
        self.app = app
        self.service = service
        self.max_body = max_body_bytes
        self.route_label = route_label

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        supplied = headers.get("x-request-id", "")
        # The request id is always the server's own (unique per request, so per audit row); a
        # client's X-Request-Id is kept apart as the correlation id, redacted like any free text.
        ctx = RequestContext(request_id=uuid.uuid4().hex,
                             correlation_id=redact(supplied)[:64] if _RID.match(supplied) else None)
        token = bind_context(ctx)
        method = scope["method"]
        head = method == "HEAD"
        if head:  # HEAD wherever GET: route it as GET, send the headers and no body
            scope = {**scope, "method": "GET"}
        state = {"status": 500, "started": False}
        parent = propagate.extract(headers)
        with tracer().start_as_current_span(method, context=parent, kind=SpanKind.SERVER,
                                            record_exception=False, set_status_on_exception=False) as span:
            trace_id, span_id = trace_ids()
            extra_headers = [(b"x-request-id", ctx.request_id.encode()), (b"x-trace-id", trace_id.encode())]
            if ctx.correlation_id:
                extra_headers.append((b"x-correlation-id", ctx.correlation_id.encode()))

            async def send_wrapper(message):
                if message["type"] == "http.response.start":
                    state["status"], state["started"] = message["status"], True
                    message = {**message, "headers": list(message.get("headers", [])) + extra_headers}
                elif head and message["type"] == "http.response.body":
                    message = {**message, "body": b""}
                await send(message)

            seen = 0

            async def receive_wrapper():
                nonlocal seen
                message = await receive()
                if message["type"] == "http.request":
                    seen += len(message.get("body", b""))
                    if seen > self.max_body:
                        # An HTTPException: FastAPI turns any other error raised while it reads a
                        # body into a 400. errors.install maps it to payload_too_large.
                        raise HTTPException(413, f"body larger than {self.max_body} bytes")
                return message

            try:
                refused = self._refused(headers, method)
                if refused is not None:
                    await error_response(refused.status, refused.code, refused.message)(scope, receive, send_wrapper)
                else:
                    await self.app(scope, receive_wrapper, send_wrapper)
            except Exception as exc:  # last resort: never leak a trace, always answer JSON
                log.error("unhandled error", exc_info=exc, extra={"error_type": type(exc).__name__})
                span.set_status(Status(StatusCode.ERROR))
                if not state["started"]:
                    await error_response(500, "internal_error", "internal error")(scope, receive, send_wrapper)
            finally:
                elapsed = time.perf_counter() - started  # the request's one timing point
                route = scope.get("route")
                label = getattr(route, "path", None) or (self.route_label(scope["path"]) if self.route_label else "unmatched")
                status = state["status"]
                if span.is_recording():  # a sampled-out span: nothing to describe
                    span.update_name(f"{method} {label}")
                    span.set_attributes({"http.request.method": method, "http.route": label,
                                         "http.response.status_code": status, "pim.request_id": ctx.request_id,
                                         "pim.persona": ctx.persona, "pim.shard": ctx.shard})
                    if status >= 500:
                        span.set_status(Status(StatusCode.ERROR))
                observe_request(self.service, label, method, ctx.persona, ctx.shard, status, elapsed, trace_id)
                if label not in _QUIET or status >= 400:
                    log.info("request", extra={"method": method, "route": label, "status": status,
                                               "duration_ms": round(elapsed * 1000, 2), "service": self.service})
                reset_context(token)

    def _refused(self, headers: dict[str, str], method: str) -> ApiError | None:
        """What is refused before any route runs: a declared body above the limit, a body not JSON."""
        declared = headers.get("content-length")
        media = headers.get("content-type", "").split(";", 1)[0].strip().lower()
        has_body = (declared not in (None, "", "0")) or "transfer-encoding" in headers
        if declared and declared.isdigit() and int(declared) > self.max_body:
            return PayloadTooLarge(f"body larger than {self.max_body} bytes")
        if method in _WITH_BODY and has_body and not (media == "application/json" or media.endswith("+json")):
            return UnsupportedMediaType(f"request body must be application/json, not {media[:60] or 'untyped'}")
        return None


def inject_trace_headers(headers: dict[str, str]) -> dict[str, str]:
    """W3C traceparent for calls the gateway makes, so the service's span joins the trace."""
    propagate.inject(headers)
    return headers


__all__ = ["EdgeMiddleware", "inject_trace_headers", "trace"]

"""The few error types the services raise, and the one place that maps them to HTTP.

Every error body is `{"code", "message", "request_id"}` (plus `errors` for 422), so clients
and the load generator can act on a machine code and an SRE can find the request in the logs.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from api_services.telemetry import current_context

log = logging.getLogger("pim.errors")


class FieldError(BaseModel):
    field: str
    code: str
    message: str


class ErrorBody(BaseModel):
    code: str
    message: str
    request_id: str
    errors: list[FieldError] | None = None


class ApiError(Exception):
    status = 500
    code = "internal_error"

    def __init__(self, message: str, code: str | None = None, headers: dict[str, str] | None = None,
                 errors: list[dict] | None = None):
        super().__init__(message)
        self.message = message
        self.code = code or self.code
        self.headers = headers or {}
        self.errors = errors


class Unauthorized(ApiError):
    status, code = 401, "unauthorized"


class Forbidden(ApiError):
    status, code = 403, "forbidden"


class NotFound(ApiError):
    status, code = 404, "not_found"


class Conflict(ApiError):
    status, code = 409, "conflict"


class PayloadTooLarge(ApiError):
    status, code = 413, "payload_too_large"


class Invalid(ApiError):
    status, code = 422, "invalid"


class RateLimited(ApiError):
    status, code = 429, "rate_limited"


class Unavailable(ApiError):
    status, code = 503, "unavailable"


ERROR_RESPONSES = {
    status: {"model": ErrorBody, "description": desc}
    for status, desc in [(401, "Missing or invalid token"), (403, "Forbidden for this persona"),
                         (404, "Not found"), (413, "Body too large"), (422, "Invalid payload"),
                         (429, "Rate limited"), (503, "Dependency unavailable")]
}


def error_response(status: int, code: str, message: str, headers: dict | None = None,
                   errors: list[dict] | None = None) -> JSONResponse:
    body = {"code": code, "message": message, "request_id": current_context().request_id}
    if errors is not None:
        body["errors"] = errors
    return JSONResponse(body, status_code=status, headers=headers)


def _field_errors(exc: RequestValidationError) -> list[dict]:
    out = []
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ())]
        out.append({"field": ".".join(loc) or "body", "code": str(err.get("type", "invalid")),
                    "message": str(err.get("msg", "invalid value"))[:200]})
    return out


async def _audit_refusal(req: Request, exc: ApiError) -> None:
    auditor = getattr(getattr(req.app.state, "runtime", None), "refusals", None)
    if auditor is None:
        return
    from starlette.concurrency import run_in_threadpool

    route = getattr(req.scope.get("route"), "path", None) or "unmatched"
    client = req.client.host if req.client else "unknown"
    await run_in_threadpool(auditor.record, exc.status, exc.code, exc.message, req.method, route, client)


def install(app: FastAPI) -> None:
    """Map every error to its status and body, in this one place."""

    @app.exception_handler(ApiError)
    async def _api_error(req: Request, exc: ApiError):
        if exc.status in (401, 403):
            await _audit_refusal(req, exc)
        return error_response(exc.status, exc.code, exc.message, exc.headers, exc.errors)

    @app.exception_handler(RequestValidationError)
    async def _validation(_req: Request, exc: RequestValidationError):
        return error_response(422, "validation_error", "request payload is invalid", errors=_field_errors(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_req: Request, exc: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}.get(exc.status_code, "http_error")
        return error_response(exc.status_code, code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(_req: Request, exc: Exception):
        log.exception("unhandled error", extra={"error_type": type(exc).__name__})
        return error_response(500, "internal_error", "internal error")

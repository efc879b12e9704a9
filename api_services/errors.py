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
from starlette.concurrency import run_in_threadpool
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


#: Every error code the API answers with, its status and meaning: the one list, which the table in
#: docs/services.md must match (a test compares them). Raising any other code is a bug.
CODES: dict[str, tuple[int, str]] = {
    "missing_token": (401, "no bearer token"),
    "invalid_token": (401, "the token does not verify, has expired, lives too long or names no known persona"),
    "persona_forbidden": (403, "the caller's persona may not do this"),
    "not_own_record": (403, "a patient acting on another patient's records"),
    "not_found": (404, "no such route"),
    "patient_not_found": (404, "no such patient"),
    "encounter_not_found": (404, "no such encounter"),
    "claim_not_found": (404, "no such claim"),
    "resource_not_found": (404, "no such resource (gateway: the id routes nowhere)"),
    "method_not_allowed": (405, "the route does not take this method (see `Allow`)"),
    "idempotency_key_reused": (409, "the Idempotency-Key was used for another request"),
    "version_conflict": (409, "the encounter changed concurrently; retry"),
    "encounter_not_documented": (409, "a claim needs a documented encounter"),
    "claim_already_open": (409, "the encounter already has an open claim"),
    "payload_too_large": (413, "body larger than `PIM_MAX_BODY_BYTES`"),
    "unsupported_media_type": (415, "a request body must be `application/json`"),
    "validation_error": (422, "the payload does not match the schema (`errors` names each field)"),
    "unknown_reference": (422, "the payload names a patient, provider, facility or encounter that does not exist"),
    "amount_above_ceiling": (422, "claim amount above `PIM_CLAIM_MAX_CENTS`"),
    "rate_limited": (429, "per-user rate limit (see `Retry-After`)"),
    "internal_error": (500, "a bug: reported with its request id"),
    "shard_unavailable": (503, "the shard cannot be reached in time or cannot be opened (see `Retry-After`)"),
    "upstream_unavailable": (503, "gateway: the owning service did not answer"),
    "service_unconfigured": (503, "gateway: no URL for the owning service"),
    "fault_injected": (503, "a fault an SRE injected on purpose (`PIM_FAULTS_FILE`, an SLO drill)"),
}


class ApiError(Exception):
    status = 500
    code = "internal_error"

    def __init__(self, message: str, code: str | None = None, headers: dict[str, str] | None = None,
                 errors: list[dict] | None = None):
        super().__init__(message)
        if (code or self.code) not in CODES:
            raise ValueError(f"undocumented error code {code or self.code!r}: add it to errors.CODES and the docs")
        self.message = message
        self.code = code or self.code
        self.headers = headers or {}
        self.errors = errors


class Unauthorized(ApiError):
    """401 with an RFC 6750 challenge: `WWW-Authenticate: Bearer realm=..., error=..., error_description=...`."""

    status, code = 401, "invalid_token"

    def __init__(self, message: str, code: str | None = None, challenge: str = "invalid_token"):
        description = message.replace("\\", "").replace('"', "'")
        super().__init__(message, code, headers={
            "WWW-Authenticate": f'Bearer realm="pim-api", error="{challenge}", error_description="{description}"'})


class Forbidden(ApiError):
    status, code = 403, "persona_forbidden"


class NotFound(ApiError):
    status, code = 404, "not_found"


class Conflict(ApiError):
    status, code = 409, "version_conflict"


class PayloadTooLarge(ApiError):
    status, code = 413, "payload_too_large"


class UnsupportedMediaType(ApiError):
    status, code = 415, "unsupported_media_type"


class Invalid(ApiError):
    status, code = 422, "validation_error"


def unknown_reference(field: str, what: str) -> Invalid:
    """422 `unknown_reference`: the payload's `field` names a `what` that does not exist."""
    return Invalid(f"unknown {what}", "unknown_reference",
                   errors=[{"field": f"body.{field}", "code": "unknown_reference", "message": f"no such {what}"}])


class RateLimited(ApiError):
    status, code = 429, "rate_limited"


class Unavailable(ApiError):
    status, code = 503, "shard_unavailable"


ERROR_RESPONSES = {
    status: {"model": ErrorBody, "description": desc}
    for status, desc in [(401, "Missing or invalid token"), (403, "Forbidden for this persona"),
                         (404, "Not found"), (413, "Body too large"), (422, "Invalid payload"),
                         (429, "Rate limited"), (503, "Dependency unavailable")]
}


#: Added to the write routes: their bodies must be JSON, and they can conflict.
WRITE_RESPONSES = {
    409: {"model": ErrorBody, "description": "Conflict: idempotency key reused, concurrent change, claim guardrail"},
    415: {"model": ErrorBody, "description": "Body is not application/json"},
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
        fields = _field_errors(exc)
        named = ", ".join(sorted({f["field"] for f in fields}))[:200]
        return error_response(422, "validation_error", f"request payload is invalid: {named}", errors=fields)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_req: Request, exc: StarletteHTTPException):
        if exc.status_code == 400:  # FastAPI: a body it cannot decode; the same as malformed JSON
            return error_response(422, "validation_error", "request body is not valid UTF-8 JSON",
                                  errors=[{"field": "body", "code": "json_invalid",
                                           "message": "body is not valid UTF-8 JSON"}])
        # 404 and 405 from Starlette's routing; 413 from the edge, for a body that outgrows the limit
        code = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}.get(exc.status_code)
        if code is None:  # never an undocumented code: anything else is reported as a bug
            log.error("unmapped HTTP error", extra={"status": exc.status_code})
            return error_response(500, "internal_error", "internal error")
        message = {404: "no such route", 405: "method not allowed on this route"}.get(exc.status_code, str(exc.detail))
        return error_response(exc.status_code, code, message, getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(_req: Request, exc: Exception):
        log.exception("unhandled error", extra={"error_type": type(exc).__name__})
        return error_response(500, "internal_error", "internal error")

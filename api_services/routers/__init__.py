"""HTTP routers, one per service; a process includes the ones it hosts."""

from __future__ import annotations

from fastapi import Header, Response

from api_services.audit import Actor
from api_services.auth import Principal
from api_services.telemetry import current_context

IdempotencyKey = Header(None, alias="Idempotency-Key", min_length=1, max_length=128, pattern=r"^[\x21-\x7e]+$",
                        description="Retrying a POST with the same key returns the first answer without a second write.")


def actor(who: Principal) -> Actor:
    ctx = current_context()
    return Actor(user_id=who.user_id, persona=who.persona, request_id=ctx.request_id,
                 correlation_id=ctx.correlation_id)


def answer_write(response: Response, status: int, location: str, replayed: bool) -> None:
    """Status and headers of an acknowledged write; a replay of the first answer says so."""
    response.status_code = status
    response.headers["Location"] = location
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"

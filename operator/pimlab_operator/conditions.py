"""Status conditions as the Kubernetes API conventions define them.

A condition's lastTransitionTime moves only when its status changes; observedGeneration is
stamped on every write; reason is one CamelCase word and message is for humans.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class Condition:
    type: str
    status: bool
    reason: str
    message: str


def merge(previous: list[dict] | None, wanted: list[Condition], generation: int,
          at: str | None = None) -> list[dict]:
    """Our condition list: `wanted` in order, keeping lastTransitionTime where the status did
    not change. Conditions of other writers are not in it: server-side apply keeps them, since
    the list is a map keyed by type."""
    at = at or now()
    by_type = {c["type"]: c for c in previous or []}
    result = []
    for condition in wanted:
        status = "True" if condition.status else "False"
        old = by_type.get(condition.type)
        transition = old["lastTransitionTime"] if old and old.get("status") == status else at
        result.append({
            "type": condition.type, "status": status, "reason": condition.reason,
            "message": condition.message, "observedGeneration": generation,
            "lastTransitionTime": transition,
        })
    return result

"""Fault injection for SLO drills: added latency and injected 503s on chosen requests of one
service process, so a latency or availability SLO can be made to burn on purpose and its alert
seen to fire and resolve.

Off by default: only a process whose `PIM_FAULTS_FILE` names a path reads it (the Lab's
`spec.faultInjection: true` sets it in every pod), and then a fault exists only while that file
holds one. No route writes the file: an SRE writes it into a pod with `kubectl exec` (pod exec
rights, which the personas' tokens never give), e.g.

    {"faults": [{"method": "POST", "path": "/encounters", "errorRatio": 1.0},
                {"method": "PATCH", "path": "/encounters/*/notes", "delay": "800ms"}]}

`path` is a shell-style pattern on the request path; each request takes the first fault that
matches. The file is stat'ed at most once a second; a file that does not parse is logged and
ignored (no fault), as the shard map is. Health and metrics routes are never faulted.
"""

from __future__ import annotations

import asyncio
import fnmatch
import json
import logging
import random
import time
from pathlib import Path
from typing import Annotated, Literal

from fastapi import Request
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from api_services import errors

log = logging.getLogger("pim.faults")
NEVER_FAULTED = frozenset({"/healthz", "/readyz", "/metrics"})
_UNITS = {"ms": 0.001, "s": 1.0}


def _seconds(text: str) -> float:
    for unit in ("ms", "s"):
        if text.endswith(unit) and text[: -len(unit)].replace(".", "", 1).isdigit():
            return float(text[: -len(unit)]) * _UNITS[unit]
    raise ValueError(f"delay {text!r}: expected e.g. 800ms or 2s")


class Fault(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE", "*"] = "*"
    path: Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=r"^/")]
    delay: Annotated[str, StringConstraints(pattern=r"^[0-9]+(\.[0-9]+)?(ms|s)$")] | None = None
    error_ratio: float = Field(0.0, ge=0, le=1, alias="errorRatio")

    @property
    def delay_seconds(self) -> float:
        seconds = _seconds(self.delay) if self.delay else 0.0
        if seconds > 30:
            raise ValueError("delay above 30s")
        return seconds

    def matches(self, method: str, path: str) -> bool:
        return self.method in ("*", method) and fnmatch.fnmatchcase(path, self.path)


class FaultFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    faults: list[Fault] = Field(default_factory=list, max_length=16)


class Faults:
    """The faults of one process: the file's content, re-read when its mtime or size changes."""

    def __init__(self, path: Path):
        self.path = path
        self.checked = 0.0
        self.stamp: tuple[float, int] | None = None
        self.faults: list[Fault] = []

    def current(self) -> list[Fault]:
        now = time.monotonic()
        if now - self.checked < 1.0:
            return self.faults
        self.checked = now
        try:
            stat = self.path.stat()
        except OSError:
            self.stamp, self.faults = None, []
            return self.faults
        stamp = (stat.st_mtime, stat.st_size)
        if stamp != self.stamp:
            self.stamp = stamp
            try:
                loaded = FaultFile.model_validate(json.loads(self.path.read_text() or "{}")).faults
                for fault in loaded:
                    fault.delay_seconds  # noqa: B018 -- refuse a delay above the cap now
            except (OSError, ValueError, ValidationError) as exc:
                log.error("fault file ignored", extra={"path": str(self.path), "error": str(exc)[:300]})
                loaded = []
            if loaded or self.faults:
                log.warning("faults injected" if loaded else "faults cleared",
                            extra={"path": str(self.path), "faults": [f.model_dump(by_alias=True) for f in loaded]})
            self.faults = loaded
        return self.faults

    def find(self, method: str, path: str) -> Fault | None:
        if path in NEVER_FAULTED:
            return None
        return next((f for f in self.current() if f.matches(method, path)), None)


def dependency(faults: Faults):
    """A FastAPI dependency for every route: it runs after routing (so the request keeps its
    route label in the metrics), sleeps the fault's delay, then fails the request at its ratio."""

    async def inject(request: Request) -> None:
        fault = faults.find(request.method, request.url.path)
        if fault is None:
            return
        if fault.delay_seconds:
            await asyncio.sleep(fault.delay_seconds)
        if fault.error_ratio and random.random() < fault.error_ratio:
            raise errors.Unavailable("fault injected for an SLO drill", code="fault_injected")

    return inject

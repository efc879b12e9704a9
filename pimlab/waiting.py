"""Polling with a deadline, for things Kubernetes makes true eventually."""

from __future__ import annotations

import time
from typing import Callable, TypeVar

T = TypeVar("T")


class TimedOut(AssertionError):
    """The condition did not become true in time (an AssertionError, so tests read well)."""


def wait_for(predicate: Callable[[], T], timeout: float = 60, interval: float = 0.5,
             what: str = "condition") -> T:
    """Call `predicate` until it returns something truthy, and return that."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise TimedOut(f"timed out after {timeout:.0f}s waiting for {what}; last value: {last!r}")

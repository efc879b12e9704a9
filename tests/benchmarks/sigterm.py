"""A benchmark stopped with SIGTERM (`kill`, a job's timeout) unwinds as Ctrl-C does: its `finally`
blocks stop the servers, operators and clusters it started. Without this the default action ended
the process at once, and a stopped `bench_operator.py` left its operator running for hours."""

from __future__ import annotations

import signal


def unwind_on_sigterm() -> None:
    def stop(signum, _frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)

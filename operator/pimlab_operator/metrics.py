"""The operator's own RED metrics, by kind: reconciles, errors, durations."""

from __future__ import annotations

import time
from contextlib import contextmanager

from prometheus_client import Counter, Histogram

RECONCILES = Counter("pimlab_operator_reconciles_total", "Reconciles run, by kind and trigger",
                     ["kind", "trigger"])
ERRORS = Counter("pimlab_operator_reconcile_errors_total", "Reconciles that raised, by kind",
                 ["kind", "error"])
DURATION = Histogram("pimlab_operator_reconcile_duration_seconds", "Reconcile wall time, by kind",
                     ["kind"], buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
APPLIED = Counter("pimlab_operator_applied_objects_total", "Children server-side applied",
                  ["kind", "child_kind"])
PRUNED = Counter("pimlab_operator_pruned_objects_total", "Children deleted because they left the desired set",
                 ["kind", "child_kind"])


@contextmanager
def observed(kind: str, trigger: str):
    RECONCILES.labels(kind, trigger).inc()
    started = time.perf_counter()
    try:
        yield
    except Exception as error:
        ERRORS.labels(kind, type(error).__name__).inc()
        raise
    finally:
        DURATION.labels(kind).observe(time.perf_counter() - started)

"""The operator's log keeps what happened and drops what only says nothing did: kopf's line per
successful timer pass (the failover pass every 2 s per Shard) and httpx's line per request."""

from __future__ import annotations

import logging

import pytest

from pimlab_operator import main


@pytest.fixture()
def kopf_records():
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record)

    kopf_logger, httpx_logger = logging.getLogger("kopf.objects"), logging.getLogger("httpx")
    filters, level = list(kopf_logger.filters), httpx_logger.level
    handler = Keep(level=logging.DEBUG)
    kopf_logger.addHandler(handler)
    kopf_logger.setLevel(logging.DEBUG)
    yield records
    kopf_logger.removeHandler(handler)
    kopf_logger.filters[:] = filters
    httpx_logger.setLevel(level)


def test_successful_timer_passes_are_dropped_everything_else_kept(kopf_records):
    main.quiet_routine_logs()
    log = logging.getLogger("kopf.objects")
    log.info("Timer 'shard-failover' succeeded.")
    log.info("Handler 'chaosexperiment-update/spec' succeeded.")
    log.error("Timer 'shard-failover' failed with an exception. Will retry.")
    log.info("shard lab/shard-00: FailingOver/Promoting (PlannedSwitchover from shard-00-0)")
    assert [r.getMessage() for r in kopf_records] == [
        "Handler 'chaosexperiment-update/spec' succeeded.",
        "Timer 'shard-failover' failed with an exception. Will retry.",
        "shard lab/shard-00: FailingOver/Promoting (PlannedSwitchover from shard-00-0)",
    ]
    assert not logging.getLogger("httpx").isEnabledFor(logging.INFO)
    assert logging.getLogger("httpx").isEnabledFor(logging.WARNING)

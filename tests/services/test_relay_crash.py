"""Crash-point tests for the outbox -> relay -> event_stream -> projection pipeline.

A relay or projection process killed after ANY statement it executes must leave nothing stuck:
the next worker (another process, so another worker id) publishes and projects every event at
once, exactly once. (Regression: the relay used to claim rows with a 30 s lease in one
transaction and publish them in a second; a kill -9 between the two stranded the claimed rows
for 30 s, past the kill -9 test's deadline.)
"""

from __future__ import annotations

import os
import signal

import pytest
import sqlalchemy as sa

from api_services.audit import Actor, record_write
from api_services.engines import sqlite_engine
from api_services.tables import event_stream, metadata, outbox, processed_events
from api_services import workers
from api_services.workers import project_once, relay_once


def _killed_after(engine, n_statements: int, step) -> bool:
    """Run `step()` in a forked child that SIGKILLs itself right after its n-th SQL statement
    (a real kill -9: no rollback, no cleanup; SQLite recovers on the next open). True if the
    child died there, False if the step finished first."""
    engine.dispose()  # no connection may cross the fork
    pid = os.fork()
    if pid == 0:  # child
        try:
            seen = {"n": 0}

            def after(*_args):
                seen["n"] += 1
                if seen["n"] == n_statements:
                    os.kill(os.getpid(), signal.SIGKILL)

            sa.event.listen(engine, "after_cursor_execute", after)
            step()
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    return os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL


def _engine(tmp_path, n_events: int):
    engine = sqlite_engine(str(tmp_path / "shard.db"))
    metadata.create_all(engine)
    actor = Actor(user_id="u-1", persona="clinician", request_id="r-1")
    for i in range(n_events):
        with engine.begin() as conn:
            record_write(conn, actor, action="encounter.book", entity="encounter", entity_id=f"enc-{i}",
                         version=1, before=None, after={"i": i}, event_type="encounter.booked")
    return engine


def _count(engine, sql: str) -> int:
    with engine.connect() as conn:
        return conn.exec_driver_sql(sql).scalar_one()


@pytest.mark.parametrize("crash_at", range(1, 10))
def test_relay_killed_at_any_statement_strands_nothing(tmp_path, crash_at):
    engine = _engine(tmp_path, 5)
    killed = _killed_after(engine, crash_at, lambda: relay_once(engine, "s", "relay:host:100"))
    assert killed or crash_at > 4, "the crash point was never reached"
    # the restarted relay (new pid, so a new worker id) must publish everything in one pass
    relay_once(engine, "s", "relay:host:200")
    assert _count(engine, "select count(*) from outbox where published_at is null") == 0
    assert _count(engine, "select count(*) from event_stream") == 5
    assert project_once(engine, "s") == 5
    assert _count(engine, "select count(*) from processed_events") == 5
    assert _count(engine, "select value from financial_kpis where kpi='encounters_booked'") == 5


@pytest.mark.parametrize("crash_at", range(1, 16))
def test_projection_killed_at_any_statement_counts_each_event_once(tmp_path, crash_at):
    engine = _engine(tmp_path, 4)
    relay_once(engine, "s", "relay:host:100")
    killed = _killed_after(engine, crash_at, lambda: project_once(engine, "s"))
    assert killed or crash_at > 4, "the crash point was never reached"
    while project_once(engine, "s"):
        pass
    assert _count(engine, "select count(*) from processed_events") == 4
    assert _count(engine, "select value from financial_kpis where kpi='encounters_booked'") == 4


def test_no_committed_state_has_a_claimed_but_unpublished_row(tmp_path):
    """Claim and publish are one transaction: no committed state shows a claim without publication."""
    engine = _engine(tmp_path, 3)
    relay_once(engine, "s", "relay:host:1")
    assert _count(engine, "select count(*) from outbox where claimed_by is not null and published_at is null") == 0
    assert _count(engine, "select count(*) from outbox where claimed_by = 'relay:host:1'") == 3


def test_projection_picks_up_events_committed_below_its_checkpoint(tmp_path, monkeypatch):
    """On a server database a stream event whose position is below the checkpoint (committed
    later: identity order != commit order) is still projected, exactly once. SQLite makes
    positions visible in order, so it re-checks nothing; the server's window is forced here."""
    engine = _engine(tmp_path, 3)
    assert workers.reorder_window(engine) == 0
    monkeypatch.setattr(workers, "reorder_window", lambda conn: workers.REORDER_WINDOW)
    relay_once(engine, "s", "relay:host:1")
    with engine.begin() as conn:  # hold position 1 back, as if its transaction committed late
        late = conn.execute(sa.select(event_stream).where(event_stream.c.position == 1)).mappings().one()
        conn.execute(event_stream.delete().where(event_stream.c.position == 1))
    assert project_once(engine, "s") == 2
    with engine.begin() as conn:
        conn.execute(event_stream.insert().values(**late))
    assert project_once(engine, "s") == 1
    assert project_once(engine, "s") == 0
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(processed_events)).scalar_one() == 3
        assert conn.execute(sa.select(sa.func.count()).select_from(outbox)
                            .where(outbox.c.published_at.is_(None))).scalar_one() == 0

"""The driver-direct SQLite write path (api_services/prepared.py) inside a real group commit on a
real SQLite file: prebuilt statements run on sqlite3, anything else through SQLAlchemy in the
same transaction, errors keep SQLAlchemy's types, and a failing write leaves nothing behind."""

from __future__ import annotations

import asyncio
import sqlite3

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from api_services.domain.encounters import _INSERT_ENCOUNTER
from api_services.engines import sqlite_engine
from api_services.group_commit import GroupCommitWrites
from api_services.prepared import DriverConnection, DriverResult
from api_services.tables import encounters, metadata, migrate


def _row(encounter_id: str) -> dict:
    return {"encounter_id": encounter_id, "patient_id": "pat-" + "0" * 32, "provider_id": "prv-0001",
            "facility_id": "fac-001", "scheduled_for": "2026-06-01T09:00:00+00:00", "reason": "r",
            "status": "booked", "notes": None, "version": 1, "created_at": "t", "updated_at": "t"}


@pytest.fixture
def shard(tmp_path):
    path = str(tmp_path / "shard.db")
    engine = sqlite_engine(path)
    metadata.create_all(engine)
    migrate(engine)
    writes = GroupCommitWrites(engine, "shard-test", acquire_seconds=5)
    yield writes, path
    writes.dispose()


def _count(path: str, sql: str) -> int:
    with sqlite3.connect(path) as db:
        return db.execute(sql).fetchone()[0]


def test_prebuilt_runs_on_the_driver_and_the_rest_through_sqlalchemy_in_one_transaction(shard):
    writes, path = shard
    seen = {}

    def write(conn):
        assert isinstance(conn, DriverConnection)
        seen["direct"] = conn.execute(_INSERT_ENCOUNTER, _row("enc-1"))
        # built per call: SQLAlchemy runs it, inside the same transaction as the driver's insert
        seen["count"] = conn.execute(sa.select(sa.func.count()).select_from(encounters)).scalar()
        return "ok"

    assert writes.transact(write) == "ok"
    assert isinstance(seen["direct"], DriverResult) and seen["direct"].rowcount == 1
    assert seen["count"] == 1
    assert _count(path, "select count(*) from encounters") == 1


def test_a_failing_write_undoes_its_driver_and_sqlalchemy_statements_only(shard):
    writes, path = shard
    writes.transact(lambda conn: conn.execute(_INSERT_ENCOUNTER, _row("enc-1")))

    def duplicate(conn):
        conn.execute(encounters.update().values(reason="changed"))  # SQLAlchemy, then undone
        conn.execute(_INSERT_ENCOUNTER, _row("enc-2"))  # driver, then undone
        conn.execute(_INSERT_ENCOUNTER, _row("enc-1"))  # driver: primary key taken

    with pytest.raises(IntegrityError):  # the driver's error, as SQLAlchemy's type (-> the callers' mapping)
        writes.transact(duplicate)
    assert _count(path, "select count(*) from encounters") == 1
    assert _count(path, "select count(*) from encounters where reason='changed'") == 0


def test_async_callers_are_answered_after_their_commit(shard):
    writes, path = shard

    async def many():
        return await asyncio.gather(*(writes.transact_async(
            lambda conn, i=i: conn.execute(_INSERT_ENCOUNTER, _row(f"enc-{i}")).rowcount) for i in range(50)))

    assert asyncio.run(many()) == [1] * 50
    assert _count(path, "select count(*) from encounters") == 50


def test_a_list_of_parameter_sets_is_one_executemany_on_the_driver(shard):
    writes, path = shard
    seen = {}

    def write(conn):
        seen["many"] = conn.execute(_INSERT_ENCOUNTER, [_row(f"enc-{i}") for i in range(5)])

    def mixed(conn):  # different parameter names per row: SQLAlchemy decides, and refuses
        conn.execute(_INSERT_ENCOUNTER, [_row("enc-5"), {k: v for k, v in _row("enc-6").items() if k != "notes"}])

    writes.transact(write)
    assert isinstance(seen["many"], DriverResult) and seen["many"].rowcount == 5
    with pytest.raises(sa.exc.StatementError, match="notes"):
        writes.transact(mixed)
    assert _count(path, "select count(*) from encounters") == 5


def test_the_relay_and_projection_write_through_the_group_commit_on_the_driver(shard):
    """The background steps are writes of the shard's group commit: their prebuilt statements
    run on sqlite3, and every event is published and projected exactly once."""
    from api_services.audit import Actor, record_write
    from api_services.workers import _APPEND, _MARK_PROCESSED, _PENDING, _UNPROCESSED, project_once, relay_once

    writes, path = shard
    actor = Actor(user_id="u-1", persona="clinician", request_id="r-1")
    for i in range(7):
        writes.transact(lambda conn, i=i: record_write(
            conn, actor, action="encounter.book", entity="encounter", entity_id=f"enc-{i}", version=1,
            before=None, after={"i": i}, event_type="encounter.booked"))
    assert relay_once(writes, "s", "relay:test:1", batch=5) == 5
    assert relay_once(writes, "s", "relay:test:1", batch=5) == 2
    assert relay_once(writes, "s", "relay:test:1", batch=5) == 0
    assert project_once(writes, "s", batch=4) == 4
    assert project_once(writes, "s", batch=4) == 3
    assert project_once(writes, "s", batch=4) == 0
    direct = {key[0] for key, plan in writes._plans.items() if plan is not None}
    assert {id(_PENDING), id(_APPEND), id(_UNPROCESSED), id(_MARK_PROCESSED)} <= direct
    assert _count(path, "select count(*) from event_stream") == 7
    assert _count(path, "select count(*) from outbox where published_at is null") == 0
    assert _count(path, "select count(*) from processed_events") == 7
    assert _count(path, "select value from financial_kpis where kpi='encounters_booked'") == 7

"""Write-path statements declared once (SQLAlchemy Core), and run through the SQLite driver
directly inside a group commit.

A statement wrapped in `prebuilt(...)` is the one definition every engine uses: PostgreSQL and
SQL Server execute it through SQLAlchemy; a SQLite group commit compiles it once (per
set of parameter names) to the driver's SQL and runs it on the sqlite3 connection, which keeps
its own prepared-statement cache; a list of parameter sets with the same names is one
`executemany`. Anything else given to `DriverConnection.execute` (a statement built per call,
mixed parameter names) goes through SQLAlchemy on the same connection and transaction, so every
write function works unchanged.

Only statements whose columns need no type conversion on SQLite take the direct path (strings,
integers, floats); one that would need a bind or result processor falls back to SQLAlchemy.
Driver errors are re-raised as SQLAlchemy's (IntegrityError, OperationalError ...), so callers
map them to HTTP answers the same way whichever path ran.
"""

from __future__ import annotations

import collections
import sqlite3
from contextlib import contextmanager
from typing import Any

from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.exc import DBAPIError

_DIALECT = sqlite_dialect.dialect()
#: id -> statement; holding the statement keeps its id from being reused by another object.
_PREBUILT: dict[int, Any] = {}


def prebuilt(statement):
    """Mark a module-level statement (built once, executed per call) for the driver-direct path."""
    _PREBUILT[id(statement)] = statement
    return statement


class _Plan:
    """One statement compiled for sqlite3: SQL text, where each `?` takes its value from, the
    result's row type, and how to report an inserted primary key."""

    __slots__ = ("sql", "names", "constants", "row", "columns", "pk")

    def __init__(self, statement, keys: tuple[str, ...]):
        compiled = statement.compile(dialect=_DIALECT, column_keys=list(keys))
        if compiled._bind_processors or any(
                col.type._cached_result_processor(_DIALECT, None) is not None for col in compiled._result_columns):
            raise _NotDirect
        self.sql = compiled.string
        self.names = tuple(compiled.positiontup or ())
        given = set(keys)
        self.constants = {name: compiled.binds[name].value for name in self.names if name not in given}
        self.columns = tuple(col.keyname for col in compiled._result_columns)
        self.row = collections.namedtuple("Row", self.columns, rename=True) if self.columns else None
        table = getattr(statement, "table", None)
        self.pk = tuple(c.name for c in table.primary_key.columns) if compiled.isinsert and table is not None else ()

    def values(self, params: dict) -> tuple:
        if not self.constants:
            return tuple([params[n] for n in self.names])
        return tuple([params[n] if n in params else self.constants[n] for n in self.names])


class _NotDirect(Exception):
    """A statement the direct path does not cover: SQLAlchemy runs it."""


class _Mappings:
    __slots__ = ("_result",)

    def __init__(self, result: "DriverResult"):
        self._result = result

    def first(self) -> dict | None:
        row = self._result._cursor.fetchone()
        return None if row is None else dict(zip(self._result._plan.columns, row))

    def all(self) -> list[dict]:
        cols = self._result._plan.columns
        return [dict(zip(cols, row)) for row in self._result._cursor.fetchall()]

    def __iter__(self):
        return iter(self.all())


class DriverResult:
    """The part of SQLAlchemy's Result the write path uses, over a sqlite3 cursor."""

    __slots__ = ("_cursor", "_plan", "_params")

    def __init__(self, cursor: sqlite3.Cursor, plan: _Plan, params: dict):
        self._cursor, self._plan, self._params = cursor, plan, params

    def first(self):
        row = self._cursor.fetchone()
        return None if row is None else self._plan.row._make(row)

    def all(self) -> list:
        make = self._plan.row._make
        return [make(row) for row in self._cursor.fetchall()]

    def scalar(self):
        row = self._cursor.fetchone()
        return None if row is None else row[0]

    def scalars(self):
        return _Scalars([row[0] for row in self._cursor.fetchall()])

    def mappings(self) -> _Mappings:
        return _Mappings(self)

    @property
    def rowcount(self) -> int:
        return self._cursor.rowcount

    @property
    def inserted_primary_key(self) -> tuple:
        params, last = self._params, self._cursor.lastrowid
        return tuple(params[name] if params.get(name) is not None else last for name in self._plan.pk)


class _Scalars(list):
    def all(self) -> list:
        return list(self)

    def first(self):
        return self[0] if self else None


class DriverConnection:
    """What a SQLite group commit hands each write: `execute` runs prebuilt statements on the
    sqlite3 connection and everything else through `conn` (the SQLAlchemy connection holding the
    same sqlite3 connection and transaction); every other attribute is `conn`'s."""

    __slots__ = ("conn", "raw", "_plans")

    def __init__(self, conn, plans: dict):
        self.conn = conn
        self.raw: sqlite3.Connection = conn.connection.dbapi_connection
        self._plans = plans  # per engine: (id(statement), parameter names) -> _Plan, or None

    def execute(self, statement, parameters=None, **kwargs):
        if kwargs or id(statement) not in _PREBUILT:
            return self.conn.execute(statement, parameters, **kwargs)
        if type(parameters) is list:  # executemany: one set of parameter names for every row
            return self._executemany(statement, parameters)
        if not (parameters is None or type(parameters) is dict):
            return self.conn.execute(statement, parameters)
        params = parameters or {}
        plan = self._plan(statement, tuple(params))
        if plan is None:
            return self.conn.execute(statement, parameters)
        try:
            cursor = self.raw.execute(plan.sql, plan.values(params))
        except sqlite3.Error as exc:
            raise DBAPIError.instance(plan.sql, params, exc, sqlite3.Error, dialect=self.conn.dialect) from exc
        return DriverResult(cursor, plan, params)

    def _executemany(self, statement, rows: list):
        names = tuple(rows[0]) if rows and type(rows[0]) is dict else None
        plan = self._plan(statement, names) if names is not None else None
        if plan is None or any(type(row) is not dict or tuple(row) != names for row in rows):
            return self.conn.execute(statement, rows)
        try:
            cursor = self.raw.executemany(plan.sql, [plan.values(row) for row in rows])
        except sqlite3.Error as exc:
            raise DBAPIError.instance(plan.sql, rows[0], exc, sqlite3.Error, dialect=self.conn.dialect) from exc
        return DriverResult(cursor, plan, rows[0])

    def _plan(self, statement, names: tuple[str, ...]) -> _Plan | None:
        key = (id(statement), names)
        plan = self._plans.get(key, False)
        if plan is False:
            try:
                plan = _Plan(statement, names)
            except _NotDirect:
                plan = None
            self._plans[key] = plan
        return plan

    @contextmanager
    def transaction(self):
        """BEGIN IMMEDIATE ... COMMIT on the driver; rolled back if the body raises. A statement
        SQLAlchemy ran inside joined the transaction (autobegin without a second BEGIN, see
        engines.sqlite_engine), so SQLAlchemy ends it: its commit is the driver's."""
        try:
            self.raw.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise DBAPIError.instance("BEGIN IMMEDIATE", None, exc, sqlite3.Error, dialect=self.conn.dialect) from exc
        try:
            yield self
        except BaseException:
            if self.conn.in_transaction():
                self.conn.rollback()
            elif self.raw.in_transaction:
                self.raw.rollback()
            raise
        try:
            if self.conn.in_transaction():
                self.conn.commit()
            else:
                self.raw.commit()
        except sqlite3.Error as exc:
            raise DBAPIError.instance("COMMIT", None, exc, sqlite3.Error, dialect=self.conn.dialect) from exc

    def savepoint(self) -> None:
        self.raw.execute("SAVEPOINT pim_write")

    def release(self) -> None:
        self.raw.execute("RELEASE SAVEPOINT pim_write")

    def rollback_savepoint(self) -> None:
        self.raw.execute("ROLLBACK TO SAVEPOINT pim_write")
        self.raw.execute("RELEASE SAVEPOINT pim_write")

    def __getattr__(self, name):
        return getattr(self.conn, name)

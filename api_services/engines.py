"""The engines of each shard: SQLite files here, SQL Server (`mssql+pyodbc`) or PostgreSQL
(`postgresql+psycopg`) in the cluster, rebuilt when the shard map changes.

Each shard has a write engine (on SQLite and PostgreSQL its writes are serialized or
group-committed, api_services/group_commit.py), a primary read engine (a client reads its own
writes) and a reporting engine (the read-only Service in the cluster). The schema they hold is
api_services/tables.py.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine

from api_services.errors import Unavailable
from api_services.group_commit import Changes, GroupCommitWrites, SerializedWrites
from api_services.sharding import ShardEntry, ShardMap
from api_services.tables import metadata, migrate

MSSQL_DRIVER = "ODBC Driver 18 for SQL Server"


def read_secret_file(root: Path, secret: str, key: str) -> str:
    """A key of a Secret mounted as files (`<root>/<secret>/<key>`); never logged."""
    return (root / secret / key).read_text().strip()


def _server_url(shard: ShardEntry, credentials_root: Path, readonly: bool, server: str, drivername: str,
                query: dict) -> URL:
    """The URL of a shard's primary (or read-only) Service, with the mounted Secret's login."""
    endpoint = shard.readonly if readonly and shard.readonly else shard.primary
    if endpoint is None or not shard.credentials_secret:
        raise ValueError(f"shard {shard.name} has no {server} endpoint or credentialsSecret")
    return URL.create(
        drivername,
        username=read_secret_file(credentials_root, shard.credentials_secret, "username"),
        password=read_secret_file(credentials_root, shard.credentials_secret, "password"),
        host=endpoint.host,
        port=endpoint.port,
        database=shard.database,
        query=query,
    )


def mssql_url(shard: ShardEntry, credentials_root: Path, readonly: bool = False) -> URL:
    """The `mssql+pyodbc` URL of a shard's primary (or read-only) Service."""
    query = {"driver": MSSQL_DRIVER, "Encrypt": "yes", "TrustServerCertificate": "yes"}
    if readonly:
        query["ApplicationIntent"] = "ReadOnly"
    return _server_url(shard, credentials_root, readonly, "SQL Server", "mssql+pyodbc", query)


def postgres_url(shard: ShardEntry, credentials_root: Path, readonly: bool = False) -> URL:
    """The `postgresql+psycopg` URL of a shard's `-primary` (or `-readonly`) Service.

    The primary's asks libpq for a read-write session: after a crash the old primary comes back
    as a standby on the same pod IP while the `-primary` Service still routes to it for a few
    seconds (until the operator removes its label); a connection made then would stay in the
    pool, pass every pre-ping, and fail every write long after the failover."""
    return _server_url(shard, credentials_root, readonly, "PostgreSQL", "postgresql+psycopg",
                       {"connect_timeout": "3", "application_name": "pim-services",
                        "target_session_attrs": "any" if readonly else "read-write"})


#: PostgreSQL's message when a wait for the synchronous quorum is cancelled: the commit is kept
#: locally but was not replicated, so the write must not be acknowledged.
SYNC_REP_CANCELLED = "synchronous replication"


class QuorumWrites:
    """A PostgreSQL write engine whose transactions are bounded in time and acknowledged only when
    the synchronous quorum has them.

    `statement_timeout` does not cover COMMIT's wait for the synchronous standbys, so with every
    standby gone a commit would wait forever. A timer cancels the transaction after `timeout`
    seconds: a statement then fails (QueryCanceled), or COMMIT returns with PostgreSQL's WARNING
    that it stopped waiting for replication, which is turned into an error here. Either way the
    caller answers 503 and the client retries with its Idempotency-Key.
    """

    def __init__(self, engine: Engine, timeout: float = 5.0):
        self.engine = engine
        self.timeout = timeout

    @contextmanager
    def begin(self):
        with self.engine.connect() as conn:
            raw = conn.connection.driver_connection
            notices: list[str] = []

            def on_notice(diagnostic) -> None:
                notices.append(diagnostic.message_primary or "")

            raw.add_notice_handler(on_notice)
            expired = threading.Event()

            def expire() -> None:
                expired.set()
                raw.cancel()

            timer = threading.Timer(self.timeout, expire)
            timer.start()
            try:
                with conn.begin():
                    yield conn
                    if expired.is_set():  # cancelled while the body ran (a group commit goes on after
                        # a cancelled statement): the COMMIT's wait would no longer be bounded
                        raise sa.exc.OperationalError("COMMIT", None, RuntimeError(
                            f"the transaction ran past its {self.timeout:g} s bound"))
            finally:
                timer.cancel()
                raw.remove_notice_handler(on_notice)
            if any(SYNC_REP_CANCELLED in n for n in notices):
                conn.invalidate()
                raise sa.exc.OperationalError("COMMIT", None, RuntimeError(
                    "the commit was not acknowledged by the synchronous standbys in time"))

    def __getattr__(self, name):
        return getattr(self.engine, name)


def sqlite_engine(path: str, synchronous: str = "FULL", acquire_seconds: float = 30.0) -> Engine:
    """A SQLite engine whose transactions take the write lock up front (BEGIN IMMEDIATE).

    Taking the lock at BEGIN serialises writers per shard, which the audit hash chain needs,
    and avoids the lock-upgrade deadlock of deferred transactions. WAL keeps readers unblocked.
    """
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(f"sqlite:///{path}", connect_args={"timeout": acquire_seconds, "check_same_thread": False},
                              pool_size=8, max_overflow=16, pool_timeout=acquire_seconds)

    @sa.event.listens_for(engine, "connect")
    def _connect(dbapi_conn, _record):
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA synchronous={synchronous if synchronous in ('FULL', 'NORMAL', 'EXTRA') else 'FULL'}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @sa.event.listens_for(engine, "begin")
    def _begin(conn):
        # A group commit opens its transaction on the driver (api_services/prepared.py); a statement
        # SQLAlchemy runs inside it only joins it.
        if not conn.connection.dbapi_connection.in_transaction:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def sqlite_read_engine(path: str, acquire_seconds: float = 30.0) -> Engine:
    """A reader on the same file: deferred transactions, so reads never wait for writers."""
    engine = sa.create_engine(f"sqlite:///{path}", connect_args={"timeout": acquire_seconds, "check_same_thread": False},
                              pool_size=8, max_overflow=16, pool_timeout=acquire_seconds)

    @sa.event.listens_for(engine, "connect")
    def _connect(dbapi_conn, _record):
        dbapi_conn.isolation_level = None

    @sa.event.listens_for(engine, "begin")
    def _begin(conn):
        conn.exec_driver_sql("BEGIN")

    return engine


def _why(exc: BaseException) -> str:
    """The problem in words (never an exception class name): what an SRE reads in /readyz."""
    if isinstance(exc, OSError):
        return f"cannot open the store ({exc.strerror or 'I/O error'})"
    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc).splitlines()[0] if str(orig if orig is not None else exc) else ""
    if "unable to open" in text:
        return f"cannot open the store ({text})"
    return text[:200] or "unknown error"


class Engines:
    """Engines per shard, rebuilt for a shard only when its entry in the map changes.

    A shard whose engines cannot be built (store cannot be opened, server unreachable) is kept as
    a failure with its reason: its requests get 503 `shard_unavailable`, the other shards serve on,
    and the build is retried at most every `RETRY_SECONDS` (or at once when the map changes)."""

    RETRY_SECONDS = 2.0

    def __init__(self, credentials_root: Path, synchronous: str = "FULL", create_schema: bool = True,
                 acquire_seconds: float = 30.0, write_timeout: float = 5.0, group_commit: bool = True):
        self.credentials_root = credentials_root
        self.group_commit = group_commit
        self._changes: dict[str, Changes] = {}
        self.write_timeout = write_timeout
        self.synchronous = synchronous
        self.create_schema = create_schema
        self.acquire_seconds = acquire_seconds
        self._lock = threading.Lock()
        self._by_shard: dict[str, tuple[ShardEntry, Engine, Engine, Engine]] = {}
        self._failed: dict[str, tuple[ShardEntry, str, float]] = {}

    def sync(self, shard_map: ShardMap) -> None:
        with self._lock:
            for shard in shard_map.shards:
                known = self._by_shard.get(shard.name)
                if known and known[0] == shard:
                    continue
                failed = self._failed.get(shard.name)
                if failed and failed[0] == shard and time.monotonic() - failed[2] < self.RETRY_SECONDS:
                    continue
                self._install(shard, known)

    def _install(self, shard: ShardEntry, known) -> None:
        try:
            built = self._build(shard)
        except Exception as exc:  # reported per shard, never fatal to the process
            self._failed[shard.name] = (shard, _why(exc), time.monotonic())
            if known:
                self._by_shard.pop(shard.name, None)
                for engine in known[1:]:
                    engine.dispose()
            return
        self._failed.pop(shard.name, None)
        self._by_shard[shard.name] = (shard, *built)
        if known:
            for engine in known[1:]:
                engine.dispose()

    def _build(self, shard: ShardEntry) -> tuple[Engine, Engine, Engine]:
        if shard.sqlite_path:
            write = sqlite_engine(shard.sqlite_path, self.synchronous, self.acquire_seconds)
            try:
                if self.create_schema:
                    metadata.create_all(write)
                    migrate(write)
                else:
                    with write.connect() as conn:
                        conn.exec_driver_sql("SELECT 1")
            except Exception:
                write.dispose()
                raise
            read = sqlite_read_engine(shard.sqlite_path, self.acquire_seconds)
            kind = GroupCommitWrites if self.group_commit else SerializedWrites
            return kind(write, shard.name, self.acquire_seconds), read, read
        if shard.engine == "postgres":
            base = sa.create_engine(postgres_url(shard, self.credentials_root), pool_pre_ping=True,
                                    pool_timeout=self.write_timeout)
            if self.create_schema:
                metadata.create_all(base)
                migrate(base)
            reporting = sa.create_engine(postgres_url(shard, self.credentials_root, readonly=True),
                                         pool_pre_ping=True, pool_timeout=self.write_timeout)
            writes = QuorumWrites(base, self.write_timeout)
            if self.group_commit:
                writes = GroupCommitWrites(writes, shard.name, self.acquire_seconds)
            return writes, base, reporting
        write = sa.create_engine(mssql_url(shard, self.credentials_root), pool_pre_ping=True,
                                 pool_timeout=self.acquire_seconds)
        if self.create_schema:
            metadata.create_all(write)
            migrate(write)
        primary_read = write
        reporting = sa.create_engine(mssql_url(shard, self.credentials_root, readonly=True), pool_pre_ping=True,
                                     pool_timeout=self.acquire_seconds)
        return write, primary_read, reporting

    def _get(self, shard: str, index: int):
        entry = self._by_shard.get(shard)
        if entry is not None:
            return entry[index]
        failed = self._failed.get(shard)
        if failed is not None and time.monotonic() - failed[2] >= self.RETRY_SECONDS:
            with self._lock:
                failed = self._failed.get(shard)
                if failed is not None and time.monotonic() - failed[2] >= self.RETRY_SECONDS:
                    self._install(failed[0], None)
            entry = self._by_shard.get(shard)
            if entry is not None:
                return entry[index]
            failed = self._failed.get(shard)
        if failed is not None:
            raise Unavailable(f"shard {shard} is unavailable: {failed[1]}; retry later", "shard_unavailable",
                              headers={"Retry-After": str(int(self.RETRY_SECONDS))})
        raise Unavailable(f"shard {shard} is not configured", "shard_unavailable", headers={"Retry-After": "1"})

    def built(self, shard: str) -> bool:
        """Whether the shard's engines exist (getting them does no I/O)."""
        return shard in self._by_shard

    def write(self, shard: str) -> Engine:
        return self._get(shard, 1)

    def read(self, shard: str) -> Engine:
        """Patient-facing reads: always the primary, so a client reads its own writes."""
        return self._get(shard, 2)

    def reporting(self, shard: str) -> Engine:
        """KPI and admin reads: the read-only Service (AG readable secondary) in the cluster."""
        return self._get(shard, 3)

    def changes(self, shard: str):
        """The shard's committed-write signal (kept across engine rebuilds): workers wake on it."""
        signal = self._changes.get(shard)
        if signal is None:
            signal = self._changes.setdefault(shard, Changes())
        return signal

    def failure(self, shard: str) -> str | None:
        """Why a shard's engines could not be built, or None when they are."""
        failed = self._failed.get(shard)
        return failed[1] if failed is not None and shard not in self._by_shard else None

    def names(self) -> list[str]:
        return sorted(set(self._by_shard) | set(self._failed))

    def dispose(self) -> None:
        with self._lock:
            for _shard, *engines in self._by_shard.values():
                for engine in engines:
                    engine.dispose()
            self._by_shard.clear()
            self._failed.clear()

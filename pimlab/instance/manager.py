"""The PostgreSQL instance manager: one per pod of a `engine: postgres` Shard.

It decides at start what its instance is (plan.py), runs `postgres` as a child process, and
serves a small HTTP API on `--http-port` that the operator (the failover manager) uses:

    GET  /status       role, health, WAL position, upstream, quorum membership, standbys (JSON)
    GET  /healthz      the manager is alive (liveness)
    GET  /readyz       the database accepts connections in its role (readiness)
    POST /fence        stop PostgreSQL and keep it stopped (the old primary, before a promotion)
    POST /detach       a standby stops following its primary (positions stop moving)
    POST /promote      pg_promote(); then slots for the others and the synchronous quorum
    POST /follow       {"primary": name, "address": ip}: stream from it (pg_rewind or re-clone
                       first if needed); the operator gives the primary pod's IP, so re-pointing
                       a standby during a failover does not wait on cluster DNS
    POST /write-probe  one write acknowledged by the synchronous quorum (or not)

POST requires `Authorization: Bearer <token>` when the credentials directory holds
`manager-token`. The database password is read from the mounted Secret's files and handed to
PostgreSQL tools only through files of mode 0600 (a pwfile for initdb, a passfile for
replication); it is never logged, printed or put into a command line or a config file.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import psycopg

from pimlab.instance.plan import Local, Peer, StartPlan, plan_start
from pimlab_operator.render import render_text

log = logging.getLogger("pimlab.instance")


@dataclass(frozen=True)
class PeerAddress:
    host: str
    pg_port: int = 5432
    http_port: int = 8008


@dataclass
class Config:
    name: str
    data_dir: Path
    run_dir: Path
    credentials_dir: Path
    peers: dict[str, PeerAddress]            # every instance of the shard, this one included
    bootstrap_primary: str
    synchronous: int = 1
    port: int = 5432
    http_port: int = 8008
    listen: str = "*"
    http_host: str = "0.0.0.0"
    bin_dir: Path = Path("/usr/lib/postgresql/15/bin")
    database: str = "pim"
    postgres_log: Path | None = None
    extra: dict = field(default_factory=dict)

    @property
    def others(self) -> list[str]:
        return sorted(n for n in self.peers if n != self.name)


def parse_peers(text: str) -> dict[str, PeerAddress]:
    """`name=host[:pgport[:httpport]],...`"""
    peers = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        name, _, address = item.partition("=")
        parts = (address or name).split(":")
        peers[name] = PeerAddress(parts[0], int(parts[1]) if len(parts) > 1 else 5432,
                                  int(parts[2]) if len(parts) > 2 else 8008)
    return peers


def slot_name(pod: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in pod.lower())


def _sql(template: str, **context) -> str:
    return render_text(f"shard/postgres/{template}", **context).strip()


def _pgpass_escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace(":", "\\:")


class Instance:
    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.proc: subprocess.Popen | None = None
        self.upstream: str | None = None
        self.addresses: dict[str, str] = {}  # peer -> pod IP the operator gave with /follow
        self.fenced = False
        self.stopping = False
        self.busy = threading.RLock()      # one action at a time (boot, promote, follow, ...)
        self.last_plan: StartPlan | None = None
        cfg.run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.socket_dir = cfg.run_dir / "socket"
        self.socket_dir.mkdir(exist_ok=True, mode=0o700)
        self.passfile = cfg.run_dir / "pgpass"
        self._write_private(self.passfile, f"*:*:*:{_pgpass_escape(self.username)}:{_pgpass_escape(self._password())}\n")

    # -- credentials (files of the mounted Secret) ------------------------------------------
    @property
    def username(self) -> str:
        return (self.cfg.credentials_dir / "username").read_text().strip()

    def _password(self) -> str:
        return (self.cfg.credentials_dir / "password").read_text().strip()

    def token(self) -> str | None:
        path = self.cfg.credentials_dir / "manager-token"
        return path.read_text().strip() if path.exists() else None

    @staticmethod
    def _write_private(path: Path, text: str) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)

    # -- the data directory -------------------------------------------------------------------
    @property
    def has_data(self) -> bool:
        return (self.cfg.data_dir / "PG_VERSION").exists()

    @property
    def was_primary(self) -> bool:
        return self.has_data and not (self.cfg.data_dir / "standby.signal").exists()

    def conninfo(self, peer: str, dbname: str = "postgres") -> str:
        """A standby's WAL receiver connects without libpq's connect_timeout (it polls the
        connection itself), and in failovers on the real node one sat 8 s on a connection that
        did not complete. `tcp_user_timeout` bounds an attempt, so the receiver fails and tries
        again with a fresh connection a second later; with the IP the operator gave, `hostaddr`
        also takes the name lookup out of the way (`host` still names the peer)."""
        address = self.cfg.peers[peer]
        hostaddr = f"hostaddr={self.addresses[peer]} " if peer in self.addresses else ""
        return (f"host={address.host} {hostaddr}port={address.pg_port} user={self.username} passfile={self.passfile} "
                f"application_name={self.cfg.name} dbname={dbname} connect_timeout=3 tcp_user_timeout=3000 "
                "keepalives=1 keepalives_idle=2 keepalives_interval=1 keepalives_count=3")

    def write_config(self, role: str, upstream: str | None) -> None:
        text = render_text("shard/postgres/pimlab.conf.j2", name=self.cfg.name, role=role, listen=self.cfg.listen,
                           port=self.cfg.port, socket_dir=str(self.socket_dir), synchronous=self.cfg.synchronous,
                           standbys=self.cfg.others, upstream=upstream,
                           upstream_conninfo=self.conninfo(upstream).replace("'", "''") if upstream else "",
                           slot=slot_name(self.cfg.name))
        (self.cfg.data_dir / "pimlab.conf").write_text(text)
        (self.cfg.data_dir / "pg_hba.conf").write_text(render_text("shard/postgres/pg_hba.conf.j2"))
        conf = self.cfg.data_dir / "postgresql.conf"
        if "include_if_exists = 'pimlab.conf'" not in conf.read_text():
            with conf.open("a") as f:
                f.write("\ninclude_if_exists = 'pimlab.conf'\n")
        signal_file = self.cfg.data_dir / "standby.signal"
        if role == "standby":
            signal_file.touch()
        self.upstream = upstream if role == "standby" else None

    def _run(self, *argv: str, timeout: float = 600) -> subprocess.CompletedProcess:
        env = {**os.environ, "PGPASSFILE": str(self.passfile)}
        result = subprocess.run([str(self.cfg.bin_dir / argv[0]), *argv[1:]], env=env, capture_output=True,
                                text=True, timeout=timeout)
        if result.returncode != 0:
            log.warning("%s failed (%s): %s", argv[0], result.returncode, result.stderr.strip()[-500:])
        return result

    # -- the postgres process -----------------------------------------------------------------
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start_postgres(self, timeout: float = 60) -> None:
        out = open(self.cfg.postgres_log, "ab") if self.cfg.postgres_log else None
        self.proc = subprocess.Popen([str(self.cfg.bin_dir / "postgres"), "-D", str(self.cfg.data_dir)],
                                     stdout=out or sys.stderr, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running():
                raise RuntimeError(f"postgres exited with {self.proc.returncode} at start")
            try:
                with self.local() as conn:
                    conn.execute("SELECT 1")
                return
            except psycopg.OperationalError:
                time.sleep(0.1)
        raise RuntimeError("postgres did not accept connections in time")

    def stop_postgres(self, timeout: float = 30) -> None:
        if not self.running():
            self.proc = None
            return
        self.stopping = True
        try:
            self.proc.send_signal(signal.SIGINT)  # fast shutdown: walsenders send what is left first
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.send_signal(signal.SIGQUIT)
                self.proc.wait(10)
        finally:
            self.proc = None
            self.stopping = False

    def local(self, dbname: str = "postgres", **kw) -> psycopg.Connection:
        return psycopg.connect(host=str(self.socket_dir), port=self.cfg.port, user=self.username, dbname=dbname,
                               autocommit=True, connect_timeout=3, **kw)

    # -- becoming something -------------------------------------------------------------------
    def initdb(self) -> None:
        self.cfg.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        pwfile = self.cfg.run_dir / "initdb.pw"
        self._write_private(pwfile, self._password() + "\n")
        try:
            result = self._run("initdb", "-D", str(self.cfg.data_dir), "-U", self.username, f"--pwfile={pwfile}",
                               "--auth-local=trust", "--auth-host=scram-sha-256", "--data-checksums",
                               "-E", "UTF8", "--locale=C")
        finally:
            pwfile.unlink(missing_ok=True)
        if result.returncode != 0:
            raise RuntimeError("initdb failed")
        self.write_config("primary", None)
        self.start_postgres()
        with self.local() as conn:
            conn.execute("SET synchronous_commit = local")  # bootstrap only: no standby exists yet
            if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (self.cfg.database,)).fetchone():
                conn.execute(_sql("create-database.sql.j2", database=self.cfg.database))
        self.after_promotion()

    def _empty_data_dir(self) -> None:
        if self.cfg.data_dir.exists():
            for child in self.cfg.data_dir.iterdir():
                shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
        self.cfg.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.cfg.data_dir, 0o700)

    def basebackup(self, upstream: str) -> None:
        self._empty_data_dir()
        address = self.cfg.peers[upstream]
        result = self._run("pg_basebackup", "-D", str(self.cfg.data_dir), "-h", address.host, "-p",
                           str(address.pg_port), "-U", self.username, "-X", "stream", "-c", "fast", "-w",
                           "--no-password")
        if result.returncode != 0:
            self._empty_data_dir()
            raise RuntimeError(f"pg_basebackup from {upstream} failed")
        self.write_config("standby", upstream)
        self.start_postgres()

    def rewind(self, upstream: str) -> str:
        """The returning old primary: pg_rewind onto the new primary, else a fresh clone."""
        self.stop_postgres()
        result = self._run("pg_rewind", "-D", str(self.cfg.data_dir), f"--source-server={self.conninfo(upstream)}")
        if result.returncode == 0:
            self.write_config("standby", upstream)
            self.start_postgres()
            if self._streams_within(10):
                return "rewound"
            log.warning("rewound onto %s but it does not stream: cloning afresh", upstream)
            self.stop_postgres()
        else:
            log.warning("pg_rewind onto %s failed: cloning afresh", upstream)
        self.basebackup(upstream)
        return "recloned"

    def start_standby(self, upstream: str | None) -> None:
        self.write_config("standby", upstream)
        self.start_postgres()

    def after_promotion(self) -> None:
        """On a (new) primary: a slot for every other instance and the heartbeat table."""
        with self.local() as conn:
            conn.execute("SET synchronous_commit = local")
            for other in self.cfg.others:
                conn.execute(_sql("slot.sql.j2"), {"slot": slot_name(other)})
            conn.execute(_sql("heartbeat.sql.j2").split(";\n")[0])
            # the control file carries the new timeline only after a checkpoint: without it,
            # pg_rewind of the old primary would see one timeline and rewind nothing
            conn.execute("CHECKPOINT")

    def boot(self) -> StartPlan:
        """Decide and become it; `wait` means: ask again in a moment."""
        with self.busy:
            peers = self.observe_peers()
            plan = plan_start(self.cfg.name, Local(self.has_data, self.was_primary), peers, self.cfg.bootstrap_primary)
            self.last_plan = plan
            log.info("start plan: %s (%s)", plan.action, plan.reason)
            if plan.action == "initdb":
                self.initdb()
            elif plan.action == "basebackup":
                self.basebackup(plan.upstream)
            elif plan.action == "rewind":
                self.rewind(plan.upstream)
            elif plan.action == "standby":
                self.start_standby(plan.upstream)
            elif plan.action == "primary":
                self.write_config("primary", None)
                self.start_postgres()
            return plan

    def observe_peers(self) -> list[Peer]:
        out = []
        for name in self.cfg.others:
            status = fetch_status(self.cfg.peers[name])
            out.append(Peer(name, status is not None, (status or {}).get("role", "unknown"),
                            bool((status or {}).get("healthy"))))
        return out

    # -- the operator's actions ---------------------------------------------------------------
    def fence(self) -> dict:
        with self.busy:
            self.fenced = True
            self.stop_postgres()
            log.warning("fenced: postgres stopped until the operator says whom to follow")
            return self.status()

    def detach(self) -> dict:
        with self.busy:
            if self.running() and not self.was_primary:
                self.write_config("standby", None)
                with self.local() as conn:
                    conn.execute("SELECT pg_reload_conf()")
                    deadline = time.monotonic() + 10
                    while time.monotonic() < deadline and conn.execute(
                            "SELECT count(*) FROM pg_stat_wal_receiver").fetchone()[0]:
                        time.sleep(0.05)
            return self.status()

    def promote(self) -> dict:
        with self.busy:
            if not self.running():
                raise RuntimeError("postgres is not running")
            self.fenced = False
            self.write_config("primary", None)
            with self.local() as conn:
                conn.execute("SELECT pg_reload_conf()")
                promoted = conn.execute(_sql("promote.sql.j2", wait_seconds=60)).fetchone()[0]
            if not promoted:
                raise RuntimeError("pg_promote did not finish in time")
            (self.cfg.data_dir / "standby.signal").unlink(missing_ok=True)
            self.after_promotion()
            log.warning("promoted to primary")
            return self.status()

    def follow(self, primary: str, address: str | None = None) -> dict:
        with self.busy:
            if primary == self.cfg.name:
                raise ValueError("an instance cannot follow itself")
            if address:
                self.addresses[primary] = str(ipaddress.ip_address(address))  # ValueError: refused
            else:
                self.addresses.pop(primary, None)
            how = "repointed"
            if not self.has_data:
                self.basebackup(primary)
                how = "cloned"
            elif self.was_primary:
                how = self.rewind(primary)
            else:
                if self.running():
                    self.write_config("standby", primary)
                    with self.local() as conn:
                        conn.execute("SELECT pg_reload_conf()")
                    if not self._streams_within(2):
                        # a standby whose WAL receiver was stopped (detached) may wait many
                        # seconds before it starts one for the reloaded conninfo (seen: 8 s);
                        # a restart of the standby starts it at once
                        self.stop_postgres()
                        self.start_standby(primary)
                        how = "restarted"
                else:
                    self.start_standby(primary)
                if not self._streams_within(8):
                    # it holds WAL the new primary never had (it was ahead when it stopped): rewind
                    how = self.rewind(primary)
            self.fenced = False
            log.info("following %s (%s)", primary, how)
            return {**self.status(), "how": how}

    def _streams_within(self, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                with self.local() as conn:
                    if conn.execute("SELECT status FROM pg_stat_wal_receiver").fetchone() == ("streaming",):
                        return True
            except psycopg.Error:
                pass
            time.sleep(0.1)
        return False

    def write_probe(self, timeout_ms: int = 5000) -> dict:
        """One write the synchronous quorum must acknowledge. statement_timeout does not cover
        the wait for the quorum at COMMIT, so a timer cancels it; PostgreSQL then keeps the local
        commit and says so with a WARNING: that counts as not acknowledged."""
        warnings: list[str] = []
        started = time.monotonic()
        try:
            with self.local() as conn:
                conn.add_notice_handler(lambda d: warnings.append(d.message_primary or ""))
                conn.execute(f"SET statement_timeout = {int(timeout_ms)}")
                timer = threading.Timer(timeout_ms / 1000, conn.cancel)
                timer.start()
                try:
                    with conn.transaction():
                        conn.execute(_sql("heartbeat.sql.j2").split(";\n")[1], {"name": self.cfg.name})
                finally:
                    timer.cancel()
        except psycopg.Error as error:
            return {"acknowledged": False, "error": type(error).__name__, "seconds": time.monotonic() - started}
        cancelled = any("synchronous replication" in w for w in warnings)
        return {"acknowledged": not cancelled, "seconds": time.monotonic() - started,
                **({"error": "SynchronousReplicationTimeout"} if cancelled else {})}

    # -- what the operator reads --------------------------------------------------------------
    def status(self) -> dict:
        base = {"name": self.cfg.name, "synchronous": self.cfg.synchronous > 0, "fenced": self.fenced,
                "start": self.last_plan.action if self.last_plan else None,
                "wasPrimary": self.was_primary, "upstream": self.upstream}
        if not self.running():
            return {**base, "role": "stopped" if self.has_data else "empty", "healthy": False, "streaming": False,
                    "position": self._control_position()}
        try:
            with self.local() as conn:
                row = conn.execute(_sql("status.sql.j2")).fetchone()
                replication = [] if row[0] else [
                    {"name": r[0], "state": r[1], "syncState": r[2], "lagBytes": r[3]}
                    for r in conn.execute(_sql("replication.sql.j2")).fetchall()]
        except psycopg.Error as error:
            return {**base, "role": "unknown", "healthy": False, "streaming": False, "error": type(error).__name__}
        in_recovery, position, timeline, receiver, sync_names = row
        return {**base, "role": "standby" if in_recovery else "primary", "healthy": True, "position": position,
                "timeline": timeline, "streaming": receiver == "streaming", "synchronousStandbyNames": sync_names,
                "replication": replication}

    def _control_position(self) -> int | None:
        """A stopped instance's last checkpoint (informative: the operator never promotes it)."""
        if not self.has_data:
            return None
        result = subprocess.run([str(self.cfg.bin_dir / "pg_controldata"), str(self.cfg.data_dir)],
                                capture_output=True, text=True, env={**os.environ, "LC_ALL": "C"})
        for line in result.stdout.splitlines():
            if line.startswith("Latest checkpoint's REDO location:"):
                hi, lo = line.split(":", 1)[1].strip().split("/")
                return (int(hi, 16) << 32) + int(lo, 16)
        return None

    # -- supervision --------------------------------------------------------------------------
    def supervise(self, stop: threading.Event, interval: float = 1.0) -> None:
        """Boot until something is running; restart a crashed postgres through `boot` again
        (so a crashed primary comes back as a standby and never promotes itself)."""
        while not stop.is_set():
            try:
                if not self.fenced and not self.stopping and not self.running() and self.busy.acquire(blocking=False):
                    try:
                        if self.proc is not None:
                            log.warning("postgres exited with %s: deciding again", self.proc.returncode)
                            self.proc = None
                        self.boot()
                    finally:
                        self.busy.release()
            except Exception as error:  # keep supervising; the operator sees the state in /status
                log.warning("boot failed: %s", error)
            stop.wait(interval)


def fetch_status(address: PeerAddress, timeout: float = 1.0) -> dict | None:
    try:
        with urllib.request.urlopen(f"http://{address.host}:{address.http_port}/status", timeout=timeout) as r:
            return json.loads(r.read())
    except (OSError, ValueError):
        return None


def serve(instance: Instance, host: str, port: int) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *_):  # requests are not logged (no bodies, no headers)
            return

        def _send(self, status: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            if self.path == "/healthz":
                return self._send(200, {"ok": True})
            status = instance.status()
            if self.path == "/status":
                return self._send(200, status)
            if self.path == "/readyz":
                return self._send(200 if status["healthy"] else 503, {"ready": status["healthy"]})
            self._send(404, {"error": "not found"})

        def do_POST(self):
            token = instance.token()
            if token and self.headers.get("Authorization") != f"Bearer {token}":
                return self._send(401, {"error": "unauthorized"})
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length) or b"{}") if length else {}
            actions = {"/fence": instance.fence, "/detach": instance.detach, "/promote": instance.promote,
                       "/write-probe": instance.write_probe,
                       "/follow": lambda: instance.follow(str(body.get("primary", "")), body.get("address") or None)}
            if self.path not in actions:
                return self._send(404, {"error": "not found"})
            try:
                self._send(200, actions[self.path]())
            except (RuntimeError, ValueError, KeyError, psycopg.Error) as error:
                log.warning("%s failed: %s", self.path, error)
                self._send(int(HTTPStatus.CONFLICT), {"error": type(error).__name__, "message": str(error)[:300]})

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True, name="instance-http").start()
    return server


def run(cfg: Config) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format='{"time":"%(asctime)s","level":"%(levelname)s","instance":"' + cfg.name
                        + '","message":"%(message)s"}')
    if os.geteuid() == 0:
        print("pimlab instance: refusing to run as root (PostgreSQL will not)", file=sys.stderr)
        return 2
    instance = Instance(cfg)
    server = serve(instance, cfg.http_host, cfg.http_port)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    supervisor = threading.Thread(target=instance.supervise, args=(stop,), daemon=True, name="supervisor")
    supervisor.start()
    stop.wait()
    server.shutdown()
    with instance.busy:
        instance.fenced = True
        instance.stop_postgres()
    return 0

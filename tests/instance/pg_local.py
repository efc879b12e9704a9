"""A postgres Shard on loopback: one `pimlab instance run` per replica, as in the pods, and the
operator's failover manager (shard/failover_pass.py with the PostgreSQL driver) driving them, with the
role labels kept in a dict instead of on pods.

Debian's PostgreSQL 15 runs as the unprivileged `postgres` user (PostgreSQL refuses root) under a
temporary directory, on free high loopback ports. `LocalShard.close()` stops every process it
started (managers by SIGTERM, which stop postgres; stragglers by their pid files).
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import psycopg

from pimlab_operator.shard.drivers.postgres import Endpoint, PostgresDriver
from pimlab_operator.shard.failover import Memory, Policy
from pimlab_operator.shard.failover_pass import PassResult, run_pass
from pimlab_operator.shard.model import FailoverRecord

PG_BIN = Path("/usr/lib/postgresql/15/bin")
PIMLAB = Path(sys.executable).with_name("pimlab")


def available() -> str | None:
    """Why the real PostgreSQL tests cannot run here, or None."""
    if not (PG_BIN / "postgres").exists():
        return "PostgreSQL 15 is not installed (make deps installs postgresql-15)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "no `postgres` user to run PostgreSQL as"
        if not shutil.which("setpriv"):
            return "setpriv is missing"
    return None


def free_ports(count: int) -> list[int]:
    sockets, ports = [], []
    for _ in range(count):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        sockets.append(s)
        ports.append(s.getsockname()[1])
    for s in sockets:
        s.close()
    return ports


@dataclass
class Member:
    name: str
    pg_port: int
    http_port: int
    data_dir: Path
    run_dir: Path
    log: Path
    proc: subprocess.Popen | None = None


@dataclass
class LocalShard:
    replicas: int = 3
    synchronous: int = 1
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="pimlab-pg-")))
    name: str = "shard-00"

    def __post_init__(self):
        self.user = "postgres" if os.geteuid() == 0 else None
        self._chown(self.root)
        self.creds = self.root / "credentials"
        self.creds.mkdir(mode=0o700)
        self.password = secrets.token_urlsafe(24)
        (self.creds / "username").write_text("pim")
        (self.creds / "password").write_text(self.password)
        (self.creds / "manager-token").write_text(secrets.token_urlsafe(24))
        self._chown(self.creds, recursive=True)
        ports = free_ports(2 * self.replicas)
        self.members = {}
        for i in range(self.replicas):
            pod = f"{self.name}-{i}"
            self.members[pod] = Member(pod, ports[2 * i], ports[2 * i + 1], self.root / pod / "pgdata",
                                       self.root / pod / "run", self.root / pod / "manager.log")
            (self.root / pod).mkdir()
            self._chown(self.root / pod)
        self.labels: dict[str, str | None] = {pod: None for pod in self.members}
        self.memory = Memory()
        self.driver = PostgresDriver({p: Endpoint("127.0.0.1", m.http_port) for p, m in self.members.items()},
                                     token=(self.creds / "manager-token").read_text())
        self.failovers: list[FailoverRecord] = []
        self.events: list = []

    # -- processes ---------------------------------------------------------------------------
    def _chown(self, path: Path, recursive: bool = False) -> None:
        if self.user:
            shutil.chown(path, self.user, self.user)
            if recursive:
                for child in path.rglob("*"):
                    shutil.chown(child, self.user, self.user)

    def peers(self) -> str:
        return ",".join(f"{m.name}=127.0.0.1:{m.pg_port}:{m.http_port}" for m in self.members.values())

    def start(self, pod: str) -> None:
        m = self.members[pod]
        argv = [str(PIMLAB), "instance", "run", "--name", pod, "--peers", self.peers(),
                "--bootstrap-primary", f"{self.name}-0", "--synchronous", str(self.synchronous),
                "--data-dir", str(m.data_dir), "--run-dir", str(m.run_dir), "--credentials-dir", str(self.creds),
                "--port", str(m.pg_port), "--http-port", str(m.http_port), "--listen", "127.0.0.1",
                "--http-host", "127.0.0.1", "--bin-dir", str(PG_BIN), "--postgres-log", str(m.run_dir.parent / "postgres.log")]
        if self.user:
            argv = ["setpriv", f"--reuid={self.user}", f"--regid={self.user}", "--clear-groups", *argv]
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.root), "LC_ALL": "C.UTF-8",
               "PIMLAB_HOME": os.environ.get("PIMLAB_HOME", str(Path(__file__).resolve().parents[2]))}
        with open(m.log, "ab") as log:
            m.proc = subprocess.Popen(argv, stdout=log, stderr=log, env=env, start_new_session=True)

    def postmaster_pid(self, pod: str) -> int | None:
        try:
            return int((self.members[pod].data_dir / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def kill9(self, pod: str, manager: bool = True) -> None:
        """Primary loss as a node sees it: the pod's processes die at once (kill -9)."""
        m = self.members[pod]
        if manager and m.proc and m.proc.poll() is None:
            os.killpg(m.proc.pid, signal.SIGKILL)
            m.proc.wait(10)
        pid = self.postmaster_pid(pod)
        if pid:
            try:
                os.killpg(pid, signal.SIGKILL)  # postgres runs in its own session: postmaster + backends
            except ProcessLookupError:
                pass
        self._wait_gone(pod)

    def _wait_gone(self, pod: str, timeout: float = 10) -> None:
        pid = self.postmaster_pid(pod)
        deadline = time.monotonic() + timeout
        while pid and time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)

    def stop(self, pod: str) -> None:
        m = self.members[pod]
        if m.proc and m.proc.poll() is None:
            m.proc.send_signal(signal.SIGTERM)
            try:
                m.proc.wait(40)
            except subprocess.TimeoutExpired:
                os.killpg(m.proc.pid, signal.SIGKILL)
                m.proc.wait(10)
        pid = self.postmaster_pid(pod)
        if pid:
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self._wait_gone(pod)

    def close(self) -> None:
        for pod in self.members:
            try:
                self.stop(pod)
            except Exception:  # noqa: BLE001 - cleanup goes on for the others
                pass
        if not os.environ.get("PIMLAB_KEEP_PG"):
            shutil.rmtree(self.root, ignore_errors=True)

    # -- the operator's side -----------------------------------------------------------------
    def set_label(self, pod: str, role: str | None) -> None:
        self.labels[pod] = role

    def step(self, policy: Policy) -> PassResult:
        members = self.replicas - 1 if self.synchronous > 0 else 0
        result = run_pass(self.driver, list(self.members), dict(self.labels), self.set_label, policy,
                          self.memory, members)
        self.memory = result.memory
        self.events += result.events
        if result.completed:
            self.failovers.append(result.completed)
        return result

    def converge(self, policy: Policy, until, timeout: float = 90, interval: float = 0.5) -> PassResult:
        deadline = time.monotonic() + timeout
        while True:
            result = self.step(policy)
            if until(result):
                return result
            if time.monotonic() > deadline:
                raise AssertionError(f"not converged: {result.decision.phase} {result.decision.reason} "
                                     f"{result.decision.message} {result.errors} {result.observations}")
            time.sleep(interval)

    def primary(self) -> str | None:
        return next((p for p, role in self.labels.items() if role == "primary"), None)

    # -- clients -----------------------------------------------------------------------------
    def connect(self, pod: str, **kw) -> psycopg.Connection:
        m = self.members[pod]
        return psycopg.connect(host="127.0.0.1", port=m.pg_port, user="pim", password=self.password, dbname="pim",
                               connect_timeout=2, autocommit=True, **kw)

    def url(self, pod: str) -> str:
        m = self.members[pod]
        return f"127.0.0.1:{m.pg_port}"


class Writer:
    """Writes ids continuously to whichever pod is labelled primary (the `-primary` Service);
    an id counts as acknowledged only when COMMIT returned without the WARNING PostgreSQL gives
    when it stops waiting for the synchronous quorum."""

    def __init__(self, shard: LocalShard, statement_timeout_ms: int = 3000):
        self.shard = shard
        self.timeout = statement_timeout_ms
        self.acked: list[tuple[int, float]] = []
        self.failed = 0
        self.next_id = 1
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        with self._connect(self.shard.primary()) as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS acked (id bigint PRIMARY KEY, at timestamptz NOT NULL)")
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(30)

    def _connect(self, pod: str) -> psycopg.Connection:
        conn = self.shard.connect(pod)
        conn.execute(f"SET statement_timeout = {self.timeout}")
        self.warnings: list[str] = []
        conn.add_notice_handler(lambda d: self.warnings.append(d.message_primary or ""))
        return conn

    def _run(self):
        conn, pod = None, None
        while not self._stop.is_set():
            target = self.shard.primary()
            try:
                if target is None:
                    raise psycopg.OperationalError("no primary labelled")
                if conn is None or pod != target:
                    if conn is not None:
                        conn.close()
                    conn, pod = self._connect(target), target
                self.warnings.clear()
                timer = threading.Timer(self.timeout / 1000, conn.cancel)  # bounds the wait for the quorum
                timer.start()
                try:
                    conn.execute("INSERT INTO acked (id, at) VALUES (%s, clock_timestamp())", (self.next_id,))
                finally:
                    timer.cancel()
                if any("synchronous replication" in w for w in self.warnings):
                    raise psycopg.OperationalError("not acknowledged by the synchronous quorum")
                self.acked.append((self.next_id, time.monotonic()))
                self.next_id += 1
            except psycopg.Error:
                self.failed += 1
                self.next_id += 1  # an unacknowledged id is never reused: it may or may not exist
                if conn is not None:
                    try:
                        conn.close()
                    except Exception:  # noqa: BLE001
                        pass
                conn, pod = None, None
                time.sleep(0.05)
            time.sleep(0.01)
        if conn is not None:
            conn.close()

    def first_ack_after(self, t: float) -> float | None:
        return next((at for _, at in self.acked if at > t), None)


def now() -> datetime:
    return datetime.now(timezone.utc)


class ServiceProxy:
    """What a `-primary` Service does for the services: forwards each new TCP connection to the
    pod that carries the role label now, and refuses it while no pod does (a Service without
    endpoints). Connections already forwarded stay where they are, as with kube-proxy."""

    def __init__(self, shard: LocalShard, role: str = "primary"):
        self.shard, self.role = shard, role
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        self._closed = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _target(self) -> int | None:
        pod = next((p for p, r in self.shard.labels.items() if r == self.role), None)
        return self.shard.members[pod].pg_port if pod else None

    def _accept(self):
        while not self._closed.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            port = self._target()
            if port is None:
                client.close()
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", port), timeout=2)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket):
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self):
        self._closed.set()
        self.listener.close()

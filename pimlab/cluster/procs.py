"""Processes of the local cluster: start one with a log and a pid file, wait until it is
healthy (or name it and its log), tell whether a pid still runs the same binary, stop it."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from pimlab.cluster.layout import HOST, Layout, Ports
from pimlab.cluster.pki import KeyPair
from pimlab.cluster.progress import Progress


class ClusterError(RuntimeError):
    """A component failed; the message names it and the path of its log."""


@dataclass(frozen=True)
class Component:
    name: str
    binary: Path
    args: list[str]
    healthy: Callable[[], bool]
    timeout: float = 60.0
    env: dict[str, str] = field(default_factory=dict)


def port_open(port: int, host: str = HOST) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def listening(port: int) -> bool:
    """Whether any local TCP socket listens on `port` (read from /proc: no connection made)."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                return True
    return False


def spare_port_offset(start: int = 1000) -> str:
    """A PIMLAB_PORT_OFFSET whose ports nobody listens on, for a throwaway second cluster
    (other trees on this machine may run their own clusters at offsets of their own)."""
    for offset in range(start, start + 3000, 100):
        if not any(listening(port + offset) for port in Ports().__dict__.values()):
            return str(offset)
    raise RuntimeError("no spare port offset for a second cluster")


def https_ok(url: str, ca: Path, client: KeyPair | None, expect: bytes = b"ok") -> bool:
    context = ssl.create_default_context(cafile=str(ca))
    if client is not None:
        context.load_cert_chain(str(client.cert), str(client.key))
    try:
        with urllib.request.urlopen(url, context=context, timeout=3) as response:
            return response.status == 200 and expect in response.read()
    except OSError:
        return False


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            return response.status == 200
    except OSError:
        return False


def pid_alive(pid: int, binary: Path) -> bool:
    """True when `pid` runs `binary` (a recycled pid of another program does not count)."""
    try:
        exe = os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return False
    return os.path.realpath(exe.removesuffix(" (deleted)")) == os.path.realpath(binary)


def start(layout: Layout, component: Component, progress: Progress) -> int:
    """Start `component` in its own session, record its pid, wait until it is healthy (a step
    of `progress`)."""
    with progress.step(f"start-{component.name}", f"starting {component.name}"):
        return _start(layout, component)


def _start(layout: Layout, component: Component) -> int:
    log_path = layout.log(component.name)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    layout.pids.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [str(component.binary), *component.args],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, env={**os.environ, **component.env},
        )
    layout.pid(component.name).write_text(str(proc.pid))
    deadline = time.monotonic() + component.timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ClusterError(
                f"{component.name} exited with code {proc.returncode} during start-up; "
                f"see its log: {log_path}\n{tail(log_path)}")
        if component.healthy():
            return proc.pid
        time.sleep(0.3)
    raise ClusterError(
        f"{component.name} did not become healthy within {component.timeout:.0f}s; "
        f"see its log: {log_path}\n{tail(log_path)}")


def running(layout: Layout, binaries: dict[str, Path]) -> dict[str, int]:
    """Components (name -> binary) whose recorded pid still runs their binary."""
    alive = {}
    for name, binary in binaries.items():
        try:
            pid = int(layout.pid(name).read_text())
        except (OSError, ValueError):
            continue
        if pid_alive(pid, binary):
            alive[name] = pid
    return alive


def terminate(pid: int, binary: Path, grace: float = 10.0) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not pid_alive(pid, binary):
            return
        time.sleep(0.1)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    while pid_alive(pid, binary):
        time.sleep(0.05)


def tail(path: Path, lines: int = 15) -> str:
    try:
        content = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join("    " + line for line in content[-lines:])

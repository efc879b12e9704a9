"""Run the local control plane: etcd, kube-apiserver, kube-controller-manager,
kube-scheduler and kwok, on loopback, TLS everywhere, client-certificate authentication and
RBAC authorization.

State lives under `.lab/` of the working tree (ignored by git): `.lab/kubeconfig`,
`.lab/bin/` (links to the cached binaries), `.lab/cluster/` (pki, etcd data, logs, pids).
`up` is idempotent; `down` stops every process it started and removes that state.
"""

from __future__ import annotations

import base64
import os
import signal
import socket
import ssl
import subprocess
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import yaml

from pimlab import controlplane_build
from pimlab.waiting import TimedOut, wait_for
from pimlab.pki import CertificateAuthority, KeyPair, service_account_keys

HOST = "127.0.0.1"
SERVICE_CIDR = "10.96.0.0/16"
KWOK_NODES = ("kwok-node-0", "kwok-node-1")
MARKER_NAMESPACE, MARKER_NAME = "kube-system", "pimlab-control-plane"


class ControlPlaneError(RuntimeError):
    """A component failed; the message names it and the path of its log."""


@dataclass(frozen=True)
class Ports:
    etcd_client: int = 12379
    etcd_peer: int = 12380
    apiserver: int = 16443
    controller_manager: int = 16257
    scheduler: int = 16259
    kwok: int = 16260

    @classmethod
    def from_env(cls) -> "Ports":
        base = int(os.environ.get("PIMLAB_PORT_OFFSET", "0"))
        return cls(*(p + base for p in cls().__dict__.values()))


@dataclass
class Layout:
    """Where everything of one local cluster lives, below a working tree's `.lab/`."""

    root: Path
    ports: Ports = field(default_factory=Ports.from_env)

    @property
    def lab(self) -> Path:
        return self.root / ".lab"

    @property
    def kubeconfig(self) -> Path:
        return self.lab / "kubeconfig"

    @property
    def bin(self) -> Path:
        return self.lab / "bin"

    @property
    def state(self) -> Path:
        return self.lab / "cluster"

    @property
    def pki(self) -> Path:
        return self.state / "pki"

    @property
    def logs(self) -> Path:
        return self.state / "logs"

    @property
    def pids(self) -> Path:
        return self.state / "pids"

    @property
    def cluster_id_file(self) -> Path:
        return self.state / "id"

    def log(self, component: str) -> Path:
        return self.logs / f"{component}.log"

    def pid(self, component: str) -> Path:
        return self.pids / f"{component}.pid"

    @property
    def server(self) -> str:
        return f"https://{HOST}:{self.ports.apiserver}"


@dataclass(frozen=True)
class Component:
    name: str
    binary: str
    args: list[str]
    healthy: Callable[[], bool]
    timeout: float = 60.0


# --------------------------------------------------------------------------- helpers


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((HOST, port)) == 0


def _https_ok(url: str, ca: Path, client: KeyPair, expect: bytes = b"ok") -> bool:
    context = ssl.create_default_context(cafile=str(ca))
    context.load_cert_chain(str(client.cert), str(client.key))
    try:
        with urllib.request.urlopen(url, context=context, timeout=3) as response:
            return response.status == 200 and expect in response.read()
    except OSError:
        return False


def _pid_alive(pid: int, binary: Path) -> bool:
    """True when `pid` runs `binary` (a recycled pid of another program does not count)."""
    try:
        exe = os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return False
    return os.path.realpath(exe) == os.path.realpath(binary)


def _write_kubeconfig(path: Path, server: str, ca: Path, client: KeyPair, user: str) -> None:
    def b64(p: Path) -> str:
        return base64.b64encode(p.read_bytes()).decode()

    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "pimlab", "cluster": {
            "server": server, "certificate-authority-data": b64(ca)}}],
        "users": [{"name": user, "user": {
            "client-certificate-data": b64(client.cert), "client-key-data": b64(client.key)}}],
        "contexts": [{"name": "pimlab", "context": {"cluster": "pimlab", "user": user}}],
        "current-context": "pimlab",
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)


# --------------------------------------------------------------------------- the cluster


class LocalControlPlane:
    def __init__(self, root: Path | str = ".", log=None):
        self.layout = Layout(Path(root).resolve())
        self.out = log

    def say(self, message: str) -> None:
        if self.out is not None:
            print(message, file=self.out, flush=True)

    # -- credentials ---------------------------------------------------------------------

    def _credentials(self) -> dict[str, KeyPair]:
        ca = CertificateAuthority(self.layout.pki)
        loopback = (HOST, "localhost")
        pairs = {
            "etcd-server": ca.issue("etcd-server", "etcd", server_names=loopback),
            "apiserver-etcd": ca.issue("apiserver-etcd-client", "kube-apiserver-etcd-client"),
            "apiserver": ca.issue(
                "apiserver", "kube-apiserver", client=False,
                server_names=(*loopback, "10.96.0.1", "kubernetes", "kubernetes.default",
                              "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"),
            ),
            "admin": ca.issue("admin", "pimlab-admin", "system:masters"),
            "controller-manager": ca.issue(
                "controller-manager", "system:kube-controller-manager"),
            "controller-manager-serving": ca.issue(
                "controller-manager-serving", "kube-controller-manager", client=False,
                server_names=loopback),
            "scheduler": ca.issue("scheduler", "system:kube-scheduler"),
            "scheduler-serving": ca.issue(
                "scheduler-serving", "kube-scheduler", client=False, server_names=loopback),
            "kwok": ca.issue("kwok", "kwok-controller", "system:masters"),
        }
        service_account_keys(self.layout.pki)
        return pairs

    @property
    def ca(self) -> Path:
        return self.layout.pki / "ca.crt"

    # -- components -----------------------------------------------------------------------

    def _components(self, creds: dict[str, KeyPair]) -> list[Component]:
        lay, ports, ca = self.layout, self.layout.ports, self.ca
        sa_key, sa_pub = lay.pki / "sa.key", lay.pki / "sa.pub"
        kubeconfigs = lay.state / "kubeconfigs"
        kubeconfigs.mkdir(parents=True, exist_ok=True)
        for user in ("controller-manager", "scheduler", "kwok"):
            _write_kubeconfig(kubeconfigs / f"{user}.kubeconfig", lay.server, ca,
                              creds[user], user)
        admin = creds["admin"]

        def kubeconfig(user: str) -> str:
            return str(kubeconfigs / f"{user}.kubeconfig")

        etcd_url = f"https://{HOST}:{ports.etcd_client}"
        return [
            Component(
                "etcd", "etcd",
                [
                    "--name=pimlab", f"--data-dir={lay.state / 'etcd'}",
                    f"--listen-client-urls={etcd_url}", f"--advertise-client-urls={etcd_url}",
                    f"--listen-peer-urls=https://{HOST}:{ports.etcd_peer}",
                    f"--initial-advertise-peer-urls=https://{HOST}:{ports.etcd_peer}",
                    f"--initial-cluster=pimlab=https://{HOST}:{ports.etcd_peer}",
                    f"--cert-file={creds['etcd-server'].cert}",
                    f"--key-file={creds['etcd-server'].key}",
                    f"--trusted-ca-file={ca}", "--client-cert-auth=true",
                    f"--peer-cert-file={creds['etcd-server'].cert}",
                    f"--peer-key-file={creds['etcd-server'].key}",
                    f"--peer-trusted-ca-file={ca}", "--peer-client-cert-auth=true",
                    "--listen-metrics-urls=", "--log-level=warn",
                    "--quota-backend-bytes=2147483648", "--unsafe-no-fsync=true",
                ],
                lambda: _https_ok(f"{etcd_url}/health", ca, creds["apiserver-etcd"], b"true"),
            ),
            Component(
                "kube-apiserver", "kube-apiserver",
                [
                    f"--advertise-address={HOST}", f"--bind-address={HOST}",
                    f"--secure-port={ports.apiserver}",
                    f"--etcd-servers={etcd_url}", f"--etcd-cafile={ca}",
                    f"--etcd-certfile={creds['apiserver-etcd'].cert}",
                    f"--etcd-keyfile={creds['apiserver-etcd'].key}",
                    f"--tls-cert-file={creds['apiserver'].cert}",
                    f"--tls-private-key-file={creds['apiserver'].key}",
                    f"--client-ca-file={ca}",
                    "--authorization-mode=Node,RBAC", "--anonymous-auth=false",
                    f"--service-account-key-file={sa_pub}",
                    f"--service-account-signing-key-file={sa_key}",
                    "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                    f"--service-cluster-ip-range={SERVICE_CIDR}",
                    "--allow-privileged=true", "--endpoint-reconciler-type=none",
                    f"--cert-dir={lay.state / 'apiserver-certs'}",
                    "--v=1",
                ],
                lambda: _https_ok(f"{lay.server}/readyz", ca, admin),
                timeout=120,
            ),
            Component(
                "kube-controller-manager", "kube-controller-manager",
                [
                    f"--kubeconfig={kubeconfig('controller-manager')}",
                    f"--authentication-kubeconfig={kubeconfig('controller-manager')}",
                    f"--authorization-kubeconfig={kubeconfig('controller-manager')}",
                    f"--bind-address={HOST}", f"--secure-port={ports.controller_manager}",
                    f"--tls-cert-file={creds['controller-manager-serving'].cert}",
                    f"--tls-private-key-file={creds['controller-manager-serving'].key}",
                    f"--client-ca-file={ca}", f"--root-ca-file={ca}",
                    f"--service-account-private-key-file={sa_key}",
                    "--use-service-account-credentials=true", "--leader-elect=false",
                    f"--service-cluster-ip-range={SERVICE_CIDR}",
                    "--controllers=*,-nodeipam", "--v=1",
                ],
                lambda: _https_ok(f"https://{HOST}:{ports.controller_manager}/healthz", ca, admin),
            ),
            Component(
                "kube-scheduler", "kube-scheduler",
                [
                    f"--kubeconfig={kubeconfig('scheduler')}",
                    f"--authentication-kubeconfig={kubeconfig('scheduler')}",
                    f"--authorization-kubeconfig={kubeconfig('scheduler')}",
                    f"--bind-address={HOST}", f"--secure-port={ports.scheduler}",
                    f"--tls-cert-file={creds['scheduler-serving'].cert}",
                    f"--tls-private-key-file={creds['scheduler-serving'].key}",
                    f"--client-ca-file={ca}", "--leader-elect=false", "--v=1",
                ],
                lambda: _https_ok(f"https://{HOST}:{ports.scheduler}/healthz", ca, admin),
            ),
            Component(
                "kwok", "kwok",
                [
                    f"--kubeconfig={kubeconfig('kwok')}",
                    "--manage-all-nodes=false",
                    "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
                    f"--server-address={HOST}:{ports.kwok}",
                    "--cidr=10.244.0.0/16", f"--node-ip={HOST}",
                    # Node leases: without them the node-lifecycle controller sees stale
                    # heartbeats, marks the nodes NotReady and their pods not Ready.
                    "--node-lease-duration-seconds=40",
                ],
                lambda: _port_open(ports.kwok),
            ),
        ]

    # -- lifecycle -------------------------------------------------------------------------

    def running(self) -> dict[str, int]:
        """Components whose recorded pid still runs their binary."""
        alive = {}
        if not self.layout.pids.is_dir():
            return alive
        for pid_file in self.layout.pids.glob("*.pid"):
            name = pid_file.stem
            try:
                pid = int(pid_file.read_text())
            except ValueError:
                continue
            if _pid_alive(pid, self.layout.bin / name):
                alive[name] = pid
        return alive

    def healthy(self) -> bool:
        if not self.layout.kubeconfig.exists() or not (self.layout.pki / "admin.crt").exists():
            return False
        admin = KeyPair(self.layout.pki / "admin.crt", self.layout.pki / "admin.key")
        if len(self.running()) != 5:
            return False
        return _https_ok(f"{self.layout.server}/readyz", self.ca, admin)

    def foreign_reason(self) -> str | None:
        """Why the cluster behind `.lab/kubeconfig` is not this tree's own (None if it is).
        Tests create and delete objects freely, so they run only against their own cluster."""
        config = yaml.safe_load(self.layout.kubeconfig.read_text())
        servers = {c["cluster"]["server"] for c in config.get("clusters", [])}
        if servers != {self.layout.server}:
            return f"{self.layout.kubeconfig} points to {sorted(servers)}, not {self.layout.server}"
        expected = self.layout.cluster_id_file.read_text().strip() \
            if self.layout.cluster_id_file.exists() else ""
        marker = self.kubectl("get", "configmap", MARKER_NAME, "-n", MARKER_NAMESPACE,
                              "-o", "jsonpath={.data.id}", check=False).stdout.strip()
        if not expected or marker != expected:
            return (f"the cluster at {self.layout.server} does not carry this tree's "
                    f"control-plane id ({self.layout.cluster_id_file})")
        return None

    def up(self, build_log=None) -> None:
        if self.healthy():
            self.say(f"control plane already running: {self.layout.server}")
            self._wait_nodes_ready()
            return
        if self.running():
            self.say("a previous control plane is partly running: stopping it first")
            self.down(quiet=True)
        bin_dir = controlplane_build.build(log=build_log or self.out)
        self._link_binaries(bin_dir)
        for port in self.layout.ports.__dict__.values():
            if _port_open(port):
                raise ControlPlaneError(
                    f"port {HOST}:{port} is already in use by another program; stop it or set "
                    "PIMLAB_PORT_OFFSET to move the control plane's ports")
        for directory in (self.layout.logs, self.layout.pids):
            directory.mkdir(parents=True, exist_ok=True)
        creds = self._credentials()
        for component in self._components(creds):
            self._start(component)
        _write_kubeconfig(self.layout.kubeconfig, self.layout.server, self.ca,
                          creds["admin"], "pimlab-admin")
        self._register_nodes()
        self._mark_cluster()
        self._wait_nodes_ready()
        self._wait_default_service_account()

    def _link_binaries(self, bin_dir: Path) -> None:
        self.layout.bin.mkdir(parents=True, exist_ok=True)
        for name in controlplane_build.BINARIES:
            link = self.layout.bin / name
            if link.is_symlink() or link.exists():
                link.unlink()
            link.symlink_to(bin_dir / name)

    def _start(self, component: Component) -> None:
        log_path = self.layout.log(component.name)
        self.say(f"starting {component.name} (log: {log_path})")
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                [str(self.layout.bin / component.binary), *component.args],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.layout.pid(component.name).write_text(str(proc.pid))
        deadline = time.monotonic() + component.timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise ControlPlaneError(
                    f"{component.name} exited with code {proc.returncode} during start-up; "
                    f"see its log: {log_path}\n{_tail(log_path)}")
            if component.healthy():
                return
            time.sleep(0.3)
        raise ControlPlaneError(
            f"{component.name} did not become healthy within {component.timeout:.0f}s; "
            f"see its log: {log_path}\n{_tail(log_path)}")

    def kubectl(self, *args: str, input: str | None = None, check: bool = True,
                timeout: float = 120) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [str(self.layout.bin / "kubectl"), f"--kubeconfig={self.layout.kubeconfig}", *args],
            input=input, capture_output=True, text=True, timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise ControlPlaneError(f"kubectl {' '.join(args)} failed: {proc.stderr.strip()}")
        return proc

    def _register_nodes(self) -> None:
        """kwok simulates kubelets for Node objects we create and annotate as fake."""
        capacity = {"cpu": "32", "memory": "256Gi", "pods": "110", "ephemeral-storage": "500Gi"}
        docs = []
        for index, name in enumerate(KWOK_NODES):
            docs.append({
                "apiVersion": "v1", "kind": "Node",
                "metadata": {
                    "name": name,
                    "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
                    "labels": {
                        "kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                        "kubernetes.io/arch": "amd64", "type": "kwok",
                        "topology.kubernetes.io/zone": f"zone-{index}",
                    },
                },
                "status": {"capacity": capacity, "allocatable": capacity,
                           "nodeInfo": {"architecture": "amd64", "operatingSystem": "linux",
                                        "kubeletVersion": controlplane_build.KUBERNETES_VERSION}},
            })
        self.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(docs))

    def _mark_cluster(self) -> None:
        """A ConfigMap holding this cluster's id: the tests refuse a cluster without it."""
        cluster_id = self.layout.cluster_id_file.read_text().strip() \
            if self.layout.cluster_id_file.exists() else uuid.uuid4().hex
        self.layout.cluster_id_file.write_text(cluster_id)
        marker = {"apiVersion": "v1", "kind": "ConfigMap",
                  "metadata": {"name": MARKER_NAME, "namespace": MARKER_NAMESPACE},
                  "data": {"id": cluster_id}}
        self.kubectl("apply", "-f", "-", input=yaml.safe_dump(marker))

    def _wait_nodes_ready(self, timeout: int = 90) -> None:
        proc = self.kubectl("wait", "--for=condition=Ready", "node", "--all",
                            f"--timeout={timeout}s", check=False, timeout=timeout + 10)
        if proc.returncode != 0:
            raise ControlPlaneError(
                f"kwok nodes did not become Ready: {proc.stderr.strip()}; "
                f"see {self.layout.log('kwok')}")

    def _wait_default_service_account(self, timeout: float = 60) -> None:
        """Pods can only be created once the controller-manager made the default SA."""
        try:
            wait_for(lambda: self.kubectl("get", "serviceaccount", "default", "-n", "default",
                                          check=False).returncode == 0, timeout=timeout)
        except TimedOut:
            raise ControlPlaneError(
                "the controller-manager did not create the default ServiceAccount; "
                f"see {self.layout.log('kube-controller-manager')}") from None

    def down(self, quiet: bool = False) -> None:
        """Stop every component this tree started and delete the cluster's state."""
        import shutil

        running = self.running()
        for name in reversed(_START_ORDER):
            pid = running.get(name)
            if pid is None:
                continue
            if not quiet:
                self.say(f"stopping {name} (pid {pid})")
            _terminate(pid, self.layout.bin / name)
        for path in (self.layout.state, self.layout.bin):
            shutil.rmtree(path, ignore_errors=True)
        self.layout.kubeconfig.unlink(missing_ok=True)

    def status(self) -> str:
        running = self.running()
        lines = [f"{name:<24} {'running pid ' + str(running[name]) if name in running else 'stopped'}"
                 for name in _START_ORDER]
        if self.healthy():
            lines.append("")
            lines.append(self.kubectl("get", "nodes,namespaces", "-o", "wide").stdout.rstrip())
        return "\n".join(lines)


_START_ORDER = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")


def _terminate(pid: int, binary: Path, grace: float = 10.0) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not _pid_alive(pid, binary):
            return
        time.sleep(0.1)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _tail(path: Path, lines: int = 15) -> str:
    try:
        content = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join("    " + line for line in content[-lines:])

"""The operator as a local process, authenticated as its own ServiceAccount (so its RBAC is
what it is held to): its RBAC and manifests applied, its kubeconfig written, the process started
and stopped. The lab runs it so where kwok only simulates the operator's pod (or with
`--local-operator`), GitOps always, the tests and the benchmarks with their own files."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from pimlab.cluster.handle import ClusterHandle, write_sa_kubeconfig
from pimlab.cluster.layout import Layout
from pimlab.cluster.procs import pid_alive
from pimlab_operator.render import project_home

OPERATOR_NAMESPACE, OPERATOR_SA = "pim-system", "pimlab-operator"


def write_operator_kubeconfig(cluster: ClusterHandle, path: Path) -> None:
    """The operator's kubeconfig: held to its own RBAC (clusters/base/operator/rbac.yaml)."""
    write_sa_kubeconfig(cluster, OPERATOR_NAMESPACE, OPERATOR_SA, path)


def install_operator_rbac(cluster: ClusterHandle) -> None:
    for name in ("namespace.yaml", "rbac.yaml"):
        cluster.kubectl("apply", "--server-side", "-f", str(project_home() / "clusters/base/operator" / name))


def install_operator_manifests(cluster: ClusterHandle) -> None:
    """Namespace, RBAC and Deployment, exactly as Flux applies them in a user's cluster."""
    cluster.kubectl("apply", "--server-side", "-k", str(project_home() / "clusters/base/operator"))


class OperatorProcess:
    """`pimlab operator run` as a background process with a pid file and a log file."""

    def __init__(self, kubeconfig: Path, log: Path, pid_file: Path, *, metrics_port: int,
                 health_port: int, namespaces: tuple[str, ...] = (), env: dict[str, str] | None = None):
        self.kubeconfig, self.log, self.pid_file, self.env = kubeconfig, log, pid_file, env or {}
        self.metrics_port, self.health_port, self.namespaces = metrics_port, health_port, namespaces

    def pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text())
        except (OSError, ValueError):
            return None
        return pid if pid_alive(pid, Path(sys.executable)) else None

    def start(self) -> int:
        self.stop()
        env = dict(os.environ, **self.env, KUBECONFIG=str(self.kubeconfig), PIMLAB_HOME=str(project_home()))
        args = [sys.executable, "-m", "pimlab.cli", "operator", "run", "--host", "127.0.0.1",
                "--metrics-port", str(self.metrics_port), "--health-port", str(self.health_port)]
        for namespace in self.namespaces:
            args += ["--namespace", namespace]
        with open(self.log, "ab") as log:
            proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        self.pid_file.write_text(str(proc.pid))
        return proc.pid

    def stop(self, sig: int = signal.SIGTERM, grace: float = 15) -> None:
        pid = self.pid()
        if pid is None:
            return
        os.killpg(pid, sig)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and self.pid():
            time.sleep(0.1)
        if self.pid():
            os.killpg(pid, signal.SIGKILL)
            while self.pid():
                time.sleep(0.05)
        self.pid_file.unlink(missing_ok=True)


def lab_operator(layout: Layout) -> OperatorProcess:
    """The working tree's one local operator (`.lab/operator.{log,kubeconfig,pid}`), whichever
    of `lab up` and `gitops up` started it: `lab down` stops it."""
    return OperatorProcess(
        layout.lab / "operator.kubeconfig", layout.lab / "operator.log", layout.lab / "operator.pid",
        metrics_port=int(os.environ.get("PIMLAB_OPERATOR_METRICS_PORT", "19095")),
        health_port=int(os.environ.get("PIMLAB_OPERATOR_HEALTH_PORT", "18081")),
    )

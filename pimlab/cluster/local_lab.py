"""`pimlab lab up|down`: the whole lab on the local control plane.

Up: the control plane, the CRDs, the operator's namespace and RBAC, the operator as a local
process (kwok only simulates pods, so the operator cannot run as a Pod here) authenticated as
its own ServiceAccount so its RBAC is what it is held to, then the samples.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from pimlab.cluster.local import LocalCluster
from pimlab.cluster.procs import pid_alive
from pimlab_operator.render import project_home

OPERATOR_NAMESPACE, OPERATOR_SA = "pim-system", "pimlab-operator"


def write_operator_kubeconfig(plane: LocalCluster, path: Path) -> None:
    """A kubeconfig with the operator ServiceAccount's token, not the admin's certificate, so
    the operator is held to its own RBAC (clusters/base/operator/rbac.yaml)."""
    token = plane.kubectl("create", "token", OPERATOR_SA, "-n", OPERATOR_NAMESPACE,
                          "--duration=24h").stdout.strip()
    config = yaml.safe_load(plane.layout.kubeconfig.read_text())
    config["users"] = [{"name": OPERATOR_SA, "user": {"token": token}}]
    config["contexts"] = [{"name": "pimlab", "context": {"cluster": "pimlab", "user": OPERATOR_SA}}]
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)


def install_operator_rbac(plane: LocalCluster) -> None:
    for name in ("namespace.yaml", "rbac.yaml"):
        plane.kubectl("apply", "--server-side", "-f", str(project_home() / "clusters/base/operator" / name))


def install_operator_manifests(plane: LocalCluster) -> None:
    """Namespace, RBAC and Deployment, exactly as Flux applies them in a user's cluster."""
    plane.kubectl("apply", "--server-side", "-k", str(project_home() / "clusters/base/operator"))


class OperatorProcess:
    """`pimlab operator run` as a background process with a pid file and a log file."""

    def __init__(self, kubeconfig: Path, log: Path, pid_file: Path, *, metrics_port: int,
                 health_port: int, namespaces: tuple[str, ...] = ()):
        self.kubeconfig, self.log, self.pid_file = kubeconfig, log, pid_file
        self.metrics_port, self.health_port, self.namespaces = metrics_port, health_port, namespaces

    def pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text())
        except (OSError, ValueError):
            return None
        return pid if pid_alive(pid, Path(sys.executable)) else None

    def start(self) -> int:
        self.stop()
        env = dict(os.environ, KUBECONFIG=str(self.kubeconfig), PIMLAB_HOME=str(project_home()))
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


class LocalLab:
    def __init__(self, root: Path | str = ".", out=sys.stdout):
        self.plane = LocalCluster(root, log=out)
        self.out = out
        lab_dir = self.plane.layout.lab
        self.operator_log = lab_dir / "operator.log"
        self.operator_kubeconfig = lab_dir / "operator.kubeconfig"
        self.operator = OperatorProcess(
            self.operator_kubeconfig, self.operator_log, lab_dir / "operator.pid",
            metrics_port=int(os.environ.get("PIMLAB_OPERATOR_METRICS_PORT", "19095")),
            health_port=int(os.environ.get("PIMLAB_OPERATOR_HEALTH_PORT", "18081")),
        )

    def say(self, message: str) -> None:
        print(message, file=self.out, flush=True)

    def up(self, samples: bool = True) -> None:
        home = project_home()
        self.plane.up()
        kubectl = self.plane.kubectl
        self.say("installing the CRDs from crds/")
        kubectl("apply", "--server-side", "--force-conflicts", "-f", str(home / "crds"))
        kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
        self.say("installing the operator's namespace, RBAC and Deployment (clusters/base/operator);"
                 " kwok only simulates its pod, so the operator itself runs as a local process")
        install_operator_manifests(self.plane)
        if self.operator.pid():
            self.say("restarting the operator")
        write_operator_kubeconfig(self.plane, self.operator_kubeconfig)
        pid = self.operator.start()
        self.say(f"operator started (pid {pid}, log {self.operator_log})")
        if samples:
            self.say("applying samples/")
            kubectl("apply", "--server-side", "-f", str(home / "samples"))

    def down(self) -> None:
        if self.operator.pid():
            self.say("stopping the operator")
        self.operator.stop()
        self.operator_kubeconfig.unlink(missing_ok=True)
        self.plane.down()

    def state(self) -> str:
        proc = self.plane.kubectl("get", "pimlab,deployments,statefulsets,jobs,cronjobs",
                                  "-A", check=False)
        return proc.stdout + proc.stderr

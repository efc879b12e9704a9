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

from pimlab.controlplane import LocalControlPlane, _pid_alive

OPERATOR_NAMESPACE, OPERATOR_SA = "pim-system", "pimlab-operator"


def _home() -> Path:
    return Path(__file__).resolve().parent.parent


class LocalLab:
    def __init__(self, root: Path | str = ".", out=sys.stdout):
        self.plane = LocalControlPlane(root, log=out)
        self.out = out
        self.lab_dir = self.plane.layout.lab

    @property
    def operator_log(self) -> Path:
        return self.lab_dir / "operator.log"

    @property
    def operator_pid(self) -> Path:
        return self.lab_dir / "operator.pid"

    @property
    def operator_kubeconfig(self) -> Path:
        return self.lab_dir / "operator.kubeconfig"

    def say(self, message: str) -> None:
        print(message, file=self.out, flush=True)

    def up(self, samples: bool = True) -> None:
        home = _home()
        self.plane.up()
        kubectl = self.plane.kubectl
        self.say("installing the CRDs from crds/")
        kubectl("apply", "--server-side", "--force-conflicts", "-f", str(home / "crds"))
        kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
        self.say("installing the operator's namespace and RBAC")
        for name in ("namespace.yaml", "rbac.yaml"):
            kubectl("apply", "--server-side", "-f", str(home / "clusters/base/operator" / name))
        self.start_operator()
        if samples:
            self.say("applying samples/")
            kubectl("apply", "--server-side", "-f", str(home / "samples"))

    def _write_operator_kubeconfig(self) -> None:
        """A kubeconfig with the operator ServiceAccount's token, not the admin's cert."""
        token = self.plane.kubectl("create", "token", OPERATOR_SA, "-n", OPERATOR_NAMESPACE,
                                   "--duration=24h").stdout.strip()
        admin = yaml.safe_load(self.plane.layout.kubeconfig.read_text())
        admin["users"] = [{"name": OPERATOR_SA, "user": {"token": token}}]
        admin["contexts"] = [{"name": "pimlab", "context": {"cluster": "pimlab", "user": OPERATOR_SA}}]
        self.operator_kubeconfig.write_text(yaml.safe_dump(admin, sort_keys=False))
        self.operator_kubeconfig.chmod(0o600)

    def operator_running(self) -> int | None:
        try:
            pid = int(self.operator_pid.read_text())
        except (OSError, ValueError):
            return None
        return pid if _pid_alive(pid, Path(sys.executable)) else None

    def stop_operator(self) -> None:
        pid = self.operator_running()
        if pid is None:
            return
        self.say(f"stopping the operator (pid {pid})")
        os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and self.operator_running():
            time.sleep(0.2)
        if self.operator_running():
            os.killpg(pid, signal.SIGKILL)
        self.operator_pid.unlink(missing_ok=True)

    def start_operator(self) -> None:
        """(Re)start the operator in the background; its log is .lab/operator.log."""
        self.stop_operator()
        self._write_operator_kubeconfig()
        env = dict(os.environ, KUBECONFIG=str(self.operator_kubeconfig), PIMLAB_HOME=str(_home()))
        with open(self.operator_log, "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "pimlab.cli", "operator", "run", "--host", "127.0.0.1",
                 "--metrics-port", os.environ.get("PIMLAB_OPERATOR_METRICS_PORT", "19095"),
                 "--health-port", os.environ.get("PIMLAB_OPERATOR_HEALTH_PORT", "18081")],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                start_new_session=True,
            )
        self.operator_pid.write_text(str(proc.pid))
        self.say(f"operator started (pid {proc.pid}, log {self.operator_log})")

    def down(self) -> None:
        self.stop_operator()
        self.operator_kubeconfig.unlink(missing_ok=True)
        self.plane.down()

    def state(self) -> str:
        proc = self.plane.kubectl("get", "pimlab,deployments,statefulsets,jobs,cronjobs",
                                  "-A", check=False)
        return proc.stdout + proc.stderr

"""The cluster handle every layer of this package talks to a cluster through: its layout,
`kubectl` with the admin's kubeconfig, progress said to the user (pimlab.cluster.progress), and
the kubeconfig writers (a client certificate's, a ServiceAccount token's).

It is the floor of the package's stack, with `layout`, `pki`, `procs` and `progress`: the
builders, the node and the add-ons take a `ClusterHandle`; the orchestrators (`local_cluster`,
`lab`, `gitops`) are or hold one.
"""

from __future__ import annotations

import base64
import json
import subprocess
from pathlib import Path

import yaml

from pimlab.cluster.layout import (
    KWOK_NAMESPACE_ANNOTATIONS, REAL_NODE_SELECTOR_ANNOTATION, SCHEDULER_ANNOTATION_PREFIX, Layout,
)
from pimlab.cluster.pki import KeyPair
from pimlab.cluster.procs import ClusterError
from pimlab.cluster.progress import Progress


class ClusterHandle:
    """One working tree's cluster as its users see it: `.lab/`, the admin's `kubectl`, and the
    progress said on `out` (pimlab.cluster.progress: steps, their logs in `.lab/logs/`)."""

    def __init__(self, layout: Layout, out=None):
        self.layout = layout
        self.out = out
        self.progress = Progress(out, layout.step_logs)

    def say(self, message: str) -> None:
        """One line for the user (nothing when there is no output to say it on)."""
        self.progress.say(message)

    def kubectl(self, *args: str, input: str | None = None, check: bool = True,
                timeout: float = 120) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [str(self.layout.bin / "kubectl"), f"--kubeconfig={self.layout.kubeconfig}", *args],
            input=input, capture_output=True, text=True, timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise ClusterError(f"kubectl {' '.join(args)} failed: {proc.stderr.strip()}")
        return proc

    def ensure_kwok_namespace(self, name: str) -> None:
        """Namespace `name`, its pods tolerating the kwok nodes' taint: for what is meant to be
        simulated, such as the Deployment beside a locally run operator. Created if missing,
        annotated otherwise, unless it places its pods on the real node.

        The annotations are server-side applied by a field manager of our own
        (PLACEMENT_FIELD_MANAGER), also where they are there already: Flux's
        kustomize-controller takes over and strips the fields of any `kubectl*` manager when it
        applies the same Namespace from Git, and a field we co-own is kept."""
        proc = self.kubectl("get", "namespace", name, "-o", "json", check=False)
        if proc.returncode == 0 and on_real_node(json.loads(proc.stdout)):
            return
        namespace = {"apiVersion": "v1", "kind": "Namespace",
                     "metadata": {"name": name, "annotations": KWOK_NAMESPACE_ANNOTATIONS}}
        self.kubectl("apply", "--server-side", f"--field-manager={PLACEMENT_FIELD_MANAGER}", "-f", "-",
                     input=yaml.safe_dump(namespace))


#: Who owns the placement annotations of the namespaces the local cluster makes for others.
PLACEMENT_FIELD_MANAGER = "pimlab-placement"


def on_real_node(namespace: dict) -> bool:
    """Whether a namespace places its pods on the real node (REAL_NODE_NAMESPACE_ANNOTATIONS)."""
    annotations = namespace["metadata"].get("annotations") or {}
    return REAL_NODE_SELECTOR_ANNOTATION in annotations


def placed(namespace: dict) -> bool:
    """Whether a namespace places its pods on some node (the scheduler annotations of
    layout.REAL_NODE_NAMESPACE_ANNOTATIONS or KWOK_NAMESPACE_ANNOTATIONS)."""
    annotations = namespace["metadata"].get("annotations") or {}
    return any(key.startswith(SCHEDULER_ANNOTATION_PREFIX) for key in annotations)


def write_kubeconfig(path: Path, server: str, ca: Path, client: KeyPair, user: str) -> None:
    """A kubeconfig authenticating with a client certificate (the admin's, a component's)."""
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
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)


def write_sa_kubeconfig(cluster: ClusterHandle, namespace: str, account: str, path: Path) -> None:
    """A kubeconfig with a ServiceAccount's token, not the admin's certificate, so a local
    process is held to that account's RBAC."""
    token = cluster.kubectl("create", "token", account, "-n", namespace,
                            "--duration=24h").stdout.strip()
    config = yaml.safe_load(cluster.layout.kubeconfig.read_text())
    config["users"] = [{"name": account, "user": {"token": token}}]
    config["contexts"] = [{"name": "pimlab", "context": {"cluster": "pimlab", "user": account}}]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)

"""Shared fixtures. The control plane is started once per session (or the one that
`.lab/kubeconfig` points to is reused), and the tests refuse to touch any other cluster."""

from __future__ import annotations

import os
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from pimlab.controlplane import HOST, MARKER_NAME, MARKER_NAMESPACE, LocalControlPlane

ROOT = Path(__file__).resolve().parent.parent
THIRDPARTY_CRDS = ROOT.parent / "shared" / "thirdparty-crds"


@dataclass
class Cluster:
    plane: LocalControlPlane

    @property
    def kubeconfig(self) -> Path:
        return self.plane.layout.kubeconfig

    @property
    def bin_dir(self) -> Path:
        return self.plane.layout.bin

    def kubectl(self, *args: str, input: str | None = None, check: bool = True,
                timeout: float = 120) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [str(self.bin_dir / "kubectl"), f"--kubeconfig={self.kubeconfig}", *args],
            input=input, capture_output=True, text=True, timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed:\n{proc.stderr}")
        return proc

    def apply(self, obj: dict | list[dict], *extra: str) -> subprocess.CompletedProcess[str]:
        docs = obj if isinstance(obj, list) else [obj]
        return self.kubectl("apply", "--server-side", "--field-manager=pimlab-tests",
                            *extra, "-f", "-", input=yaml.safe_dump_all(docs))

    def get(self, kind: str, name: str, namespace: str | None = None) -> dict | None:
        args = ["get", kind, name, "-o", "yaml"]
        if namespace:
            args += ["-n", namespace]
        proc = self.kubectl(*args, check=False)
        return yaml.safe_load(proc.stdout) if proc.returncode == 0 else None


def _refuse_foreign_cluster(plane: LocalControlPlane) -> None:
    """The tests create and delete objects freely: only our own local cluster qualifies."""
    config = yaml.safe_load(plane.layout.kubeconfig.read_text())
    servers = {c["cluster"]["server"] for c in config.get("clusters", [])}
    if servers != {plane.layout.server} or HOST not in plane.layout.server:
        pytest.exit(f"refusing to test against {servers}: not the local control plane "
                    f"{plane.layout.server}", returncode=3)
    marker = plane.kubectl("get", "configmap", MARKER_NAME, "-n", MARKER_NAMESPACE,
                           "-o", "jsonpath={.data.id}", check=False).stdout.strip()
    expected = plane.layout.cluster_id_file.read_text().strip()
    if not marker or marker != expected:
        pytest.exit("refusing to test: the cluster behind .lab/kubeconfig does not carry this "
                    "tree's control-plane id", returncode=3)


@pytest.fixture(scope="session")
def cluster() -> Cluster:
    plane = LocalControlPlane(ROOT)
    started_here = not plane.healthy()
    if started_here:
        plane.up()
    _refuse_foreign_cluster(plane)
    os.environ["KUBECONFIG"] = str(plane.layout.kubeconfig)
    yield Cluster(plane)
    if started_here and not os.environ.get("PIMLAB_KEEP_CLUSTER"):
        plane.down(quiet=True)


@pytest.fixture
def namespace(cluster: Cluster) -> str:
    """A fresh namespace per test, deleted (without waiting) afterwards."""
    name = f"t-{uuid.uuid4().hex[:10]}"
    cluster.kubectl("create", "namespace", name)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def _install_crds(cluster: Cluster, directory: Path) -> list[str]:
    files = sorted(directory.glob("*.yaml"))
    names = [yaml.safe_load(f.read_text())["metadata"]["name"] for f in files]
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(directory))
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                    *[f"crd/{n}" for n in names])
    return names


@pytest.fixture(scope="session")
def crds_installed(cluster: Cluster) -> Cluster:
    """The project's CRDs from crds/, applied and Established."""
    _install_crds(cluster, ROOT / "crds")
    return cluster


@pytest.fixture(scope="session")
def thirdparty_crds(cluster: Cluster) -> list[str]:
    """The third-party CRDs (prometheus-operator, Chaos Mesh, grafana-operator, Flux)."""
    return _install_crds(cluster, THIRDPARTY_CRDS)

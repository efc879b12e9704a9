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

from pimlab.cluster import thirdparty_crds as thirdparty
from pimlab.cluster.layout import KWOK_NAMESPACE_ANNOTATIONS
from pimlab.cluster.local_cluster import LocalCluster

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Cluster:
    plane: LocalCluster
    started_here: bool = False

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


@pytest.fixture(scope="session")
def cluster() -> Cluster:
    plane = LocalCluster(ROOT)
    started_here = not plane.healthy()
    if started_here:
        plane.up()
    reason = plane.foreign_reason()
    if reason:
        pytest.exit(f"refusing to run the tests: {reason}", returncode=3)
    plane.ensure_kwok()  # the `namespace` fixture's pods are simulated, also beside a real node
    os.environ["KUBECONFIG"] = str(plane.layout.kubeconfig)
    yield Cluster(plane, started_here)
    if started_here and not os.environ.get("PIMLAB_KEEP_CLUSTER"):
        plane.down(quiet=True)


@pytest.fixture
def namespace(cluster: Cluster) -> str:
    """A fresh namespace per test, deleted (without waiting) afterwards. Its pods tolerate the
    kwok nodes' taint: they are simulated there, also beside a real node."""
    name = f"t-{uuid.uuid4().hex[:10]}"
    cluster.apply({"apiVersion": "v1", "kind": "Namespace",
                   "metadata": {"name": name, "annotations": KWOK_NAMESPACE_ANNOTATIONS}})
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def _install_crds(cluster: Cluster, files: list[Path]) -> list[str]:
    names = [yaml.safe_load(f.read_text())["metadata"]["name"] for f in files]
    cluster.kubectl("apply", "--server-side", "--force-conflicts",
                    *[arg for f in files for arg in ("-f", str(f))])
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                    *[f"crd/{n}" for n in names])
    return names


@pytest.fixture(scope="session")
def crds_installed(cluster: Cluster) -> Cluster:
    """The project's CRDs from crds/, applied and Established."""
    _install_crds(cluster, sorted((ROOT / "crds").glob("*.yaml")))
    return cluster


@pytest.fixture(scope="session")
def thirdparty_crds(cluster: Cluster) -> list[str]:
    """The third-party CRDs (prometheus-operator, Chaos Mesh, grafana-operator, Flux): the
    repository's crds/thirdparty/ and the ones resolved from their projects' Go modules."""
    return _install_crds(cluster, thirdparty.all_files())

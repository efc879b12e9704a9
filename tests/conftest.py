"""Shared fixtures. The control plane is started once per test run (or the one that
`.lab/kubeconfig` points to is reused), and the tests refuse to touch any other cluster.

A run may be spread over pytest-xdist workers (`make test`). Each test module stays on one
worker, so its module fixtures are made once; the modules that bring up labs on the machine's
one real node share a worker, one after another (`REAL_NODE_MODULES`). The first worker to need
the cluster starts it under a file lock and tags it with the run's id ($PIMLAB_TEST_SESSION);
the run's controlling process stops it at the end if the tag is still its own."""

from __future__ import annotations

import fcntl
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


#: Test modules that share something a test run cannot hand out twice run in turn on one worker:
#: the labs on the real node (two at once would not fit the 2-core node; this unit is the run's
#: longest and goes first), and the modules that use the fixed names the samples, runbooks and
#: Flux use (namespace `lab`, Flux's objects). Every other module is a unit of its own. A test
#: that needs the whole cluster to itself is marked `exclusive` (`make test` runs those after).
GROUPS = {
    "real-node": ("test_real_node.py", "test_shard_failover_real_node.py", "test_slo_alerts_real_node.py",
                  "test_drill_real_node.py", "test_chaos_real_node.py", "test_personaload_real_node.py",
                  "test_images.py"),
    "fixed-names": ("test_gitops.py", "test_runbook_commands.py", "test_validation.py", "test_deploy_manifests.py",
                    "test_self_contained.py", "test_cluster_b_manifests.py"),
}
GROUP_OF = {module: group for group, modules in GROUPS.items() for module in modules}
ORDER = {module: index for index, module in enumerate(GROUPS["real-node"] + GROUPS["fixed-names"])}
RUN_ID = "PIMLAB_TEST_SESSION"


def _is_worker(config) -> bool:
    return hasattr(config, "workerinput")


def pytest_configure(config):
    """The run's id, inherited by the workers (and by a pytest a test runs in a subprocess)."""
    if not _is_worker(config):
        os.environ.setdefault(RUN_ID, uuid.uuid4().hex)


def pytest_collection_modifyitems(config, items):
    """The groups first, in GROUPS' order, and the cluster's restart last of all; under
    pytest-xdist the `exclusive` tests skip, saying why."""
    for item in items:
        if "exclusive" in item.keywords and _is_worker(config):
            item.add_marker(pytest.mark.skip(reason="needs the cluster to itself: run it alone, after the "
                                                    "other tests (as `make test` does)"))
    items.sort(key=lambda item: ("restarts_cluster" in item.keywords,
                                 ORDER.get(Path(str(item.fspath)).name, len(ORDER))))


def pytest_xdist_make_scheduler(config, log):
    """Each module one unit of work, the GROUPS one unit each, handed out in collection order."""
    from xdist.scheduler import LoadScopeScheduling  # pytest-xdist: loaded only when it runs the tests

    class ModuleGroups(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::")[0]
            return GROUP_OF.get(Path(path).name, path)

    return ModuleGroups(config, log)


def _run_tag(plane: LocalCluster) -> Path:
    return plane.layout.state / "test-run"


@pytest.fixture(scope="session")
def cluster() -> Cluster:
    plane = LocalCluster(ROOT)
    plane.layout.lab.mkdir(parents=True, exist_ok=True)
    with open(plane.layout.lab / "test-cluster.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another worker may be starting it
        if not plane.healthy():
            plane.up()
            _run_tag(plane).write_text(os.environ[RUN_ID])
    reason = plane.foreign_reason()
    if reason:
        pytest.exit(f"refusing to run the tests: {reason}", returncode=3)
    plane.ensure_kwok()  # the `namespace` fixture's pods are simulated, also beside a real node
    os.environ["KUBECONFIG"] = str(plane.layout.kubeconfig)
    tag = _run_tag(plane)
    return Cluster(plane, tag.exists() and tag.read_text() == os.environ[RUN_ID])


def pytest_sessionfinish(session):
    """Stop the cluster this run started (in the controlling process, once every worker is
    done), unless PIMLAB_KEEP_CLUSTER asks to keep it."""
    if _is_worker(session.config) or os.environ.get("PIMLAB_KEEP_CLUSTER"):
        return
    plane = LocalCluster(ROOT)
    tag = _run_tag(plane)
    if tag.exists() and tag.read_text() == os.environ.get(RUN_ID):
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

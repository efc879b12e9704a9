"""The real-node cluster the benchmarks on pods share (bench_failover.py, bench_gateway.py).

They run as scripts, not under pytest, so the test helpers they reuse (tests/conftest.py's
`Cluster`, tests/cluster/'s `operator_process` and `FailoverLab`) are put on the import path here,
and `Dirs` stands in for pytest's tmp_path_factory. The cluster is started only when none runs,
and stopped afterwards only when started here.
"""

from __future__ import annotations

import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
for _path in (ROOT / "tests" / "cluster", ROOT / "tests", ROOT):  # tests/conftest.py before tests/cluster's
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from conftest import Cluster, _install_crds  # noqa: E402

from pimlab.cluster.local_cluster import LocalCluster  # noqa: E402


class Dirs:
    """tmp_path_factory's one method, for the shared test helpers."""

    def __init__(self, base: Path):
        self.base = base

    def mktemp(self, prefix: str) -> Path:
        return Path(tempfile.mkdtemp(prefix=prefix + "-", dir=self.base))


@contextmanager
def cluster_with_real_node(what: str):
    """The local cluster with a real node and the project's CRDs; `what` names the benchmark in
    the refusal when the node is kwok only (PIMLAB_NODE=real asks for a real one)."""
    plane = LocalCluster(ROOT)
    started = not plane.healthy()
    if started:
        plane.up()
    try:
        cluster = Cluster(plane, started)
        if not plane.real_node:
            sys.exit(f"{what} needs a real node; this cluster's node mode: {plane.node_mode()} "
                     "(PIMLAB_NODE=real; another tree may hold it: /run/pimlab/real-node.owner)")
        _install_crds(cluster, ROOT / "crds")
        yield cluster
    finally:
        if started:
            plane.down(quiet=True)


@contextmanager
def failover_lab_up(what: str, namespace_prefix: str):
    """tests/cluster/failover_lab.py's lab up on the real node with the operator running: yields
    (lab, cluster, work directory); the lab is taken down afterwards, the cluster stopped if
    started here."""
    from failover_lab import FailoverLab
    from operator_process import operator_process

    with tempfile.TemporaryDirectory(prefix=f"{what}-") as tmp, cluster_with_real_node(what) as cluster, \
            operator_process(cluster, Dirs(Path(tmp)), namespace_prefix) as operator:
        lab = FailoverLab(cluster, operator.namespace, Path(tmp))
        try:
            lab.up()
            yield lab, cluster, Path(tmp)
        finally:
            lab.down()

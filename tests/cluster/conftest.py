"""Fixtures of the cluster tests. `real_sample_lab`: the sample lab on the real node, made once
per run and shared, in turn, by the modules that drive it (drills, chaos, PersonaLoads: their
group runs on one worker, tests/conftest.py), since bringing up a lab costs minutes."""

import pytest

from operator_process import real_lab, require_real_node
from pimlab.cluster import monitoring
from test_chaos_experiments import OPT_IN


def pytest_collection_modifyitems(items):
    for item in items:
        if "/tests/cluster/" in str(item.fspath):
            item.add_marker(pytest.mark.cluster)


@pytest.fixture(scope="session")
def real_sample_lab(cluster, crds_installed, thirdparty_crds, tmp_path_factory):
    """The real-node sample lab (`sample_documents(real_node=True)`) in a namespace of its own,
    seeded, with a local operator watching it (`.namespace`); scraped by the lab's Prometheus
    (its SLOs read budgets every 5 s) and opted in to chaos. Chaos Mesh's CRDs are installed
    (its daemons cannot run here: its objects are made and removed)."""
    require_real_node(cluster)
    spec = {"observability": {"prometheusUrl": monitoring.install(cluster.plane)}}
    with real_lab(cluster, tmp_path_factory, "real", lab_spec=spec,
                  env={"PIMLAB_SLO_REFRESH_SECONDS": "5"}) as process:
        cluster.kubectl("label", "namespace", process.namespace, OPT_IN, "--overwrite")
        yield process
        # while the operator runs: their finalizers would hold the namespace's deletion forever
        cluster.kubectl("delete", "drill,chaosexperiment", "--all", "-n", process.namespace, "--timeout=150s",
                        check=False, timeout=160)

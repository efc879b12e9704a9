"""Where real containers cannot run, `cluster up` says exactly why and runs kwok nodes only.

The machine's one real node belongs to the test session's cluster (when this machine can run
one), so a second tree on other ports is such a place: its `auto` falls back, its `real`
fails with the reason, its `kwok` never probes."""

from __future__ import annotations

import io
import json

import pytest

from pimlab.cluster import node
from pimlab.cluster.layout import KWOK_NODE_TAINT, KWOK_NODES
from pimlab.cluster.local_cluster import LocalCluster
from pimlab.cluster.procs import ClusterError, spare_port_offset


@pytest.fixture
def second_tree(cluster, tmp_path, monkeypatch):
    monkeypatch.setenv("PIMLAB_PORT_OFFSET", spare_port_offset(3000))
    out = io.StringIO()
    other = LocalCluster(tmp_path, log=out)
    other.out_text = out
    yield other
    other.down(quiet=True)
    assert not other.running()


def require_the_real_node_taken(tree: LocalCluster) -> None:
    """A fallback needs a reason: where the session runs kwok nodes and the machine's real node is
    free, a second tree would take it."""
    if node.probe() is None and node.busy_reason(tree.layout) is None:
        pytest.skip("the machine's real node is free (this session runs kwok nodes): nothing to fall back from")


def node_names(cluster) -> set[str]:
    items = json.loads(cluster.kubectl("get", "nodes", "-o", "json").stdout)["items"]
    return {n["metadata"]["name"] for n in items}


def test_auto_falls_back_to_kwok_and_says_why(second_tree, monkeypatch):
    monkeypatch.setenv("PIMLAB_NODE", "auto")
    require_the_real_node_taken(second_tree)
    second_tree.up()
    mode = second_tree.node_mode()
    assert mode.startswith("kwok: ") and len(mode) > len("kwok: ") + 10, mode
    reason = mode.removeprefix("kwok: ")
    assert f"no real node: {reason}; falling back to kwok nodes only" in second_tree.out_text.getvalue()
    assert node_names(second_tree) == set(KWOK_NODES)
    nodes = json.loads(second_tree.kubectl("get", "nodes", "-o", "json").stdout)["items"]
    assert not [n for n in nodes if KWOK_NODE_TAINT in n["spec"].get("taints", [])], \
        "with kwok nodes only, every pod is simulated there: no taint keeps one out"
    assert not set(second_tree.running()) & set(node.START_ORDER)
    assert f"node                     kwok: {reason}" in second_tree.status()


def test_real_fails_with_the_reason_instead_of_falling_back(second_tree, monkeypatch):
    monkeypatch.setenv("PIMLAB_NODE", "real")
    require_the_real_node_taken(second_tree)
    with pytest.raises(ClusterError, match=r"PIMLAB_NODE=real, but a real node cannot run here: .+"):
        second_tree.up()


def test_kwok_never_probes(second_tree, monkeypatch):
    monkeypatch.setenv("PIMLAB_NODE", "kwok")
    assert second_tree.choose_node_mode() == "kwok: PIMLAB_NODE=kwok"


def test_an_unknown_mode_is_refused(second_tree, monkeypatch):
    monkeypatch.setenv("PIMLAB_NODE", "docker")
    with pytest.raises(ClusterError, match="expected one of auto, real, kwok"):
        second_tree.choose_node_mode()


def test_the_probe_names_the_missing_package(monkeypatch):
    monkeypatch.setitem(node.REQUIRED, "runc", ("/nonexistent/runc", "runc"))
    assert node.probe() == "missing Debian packages: runc (`make deps` installs them)"


def test_the_probe_passes_where_the_session_runs_a_real_node(cluster):
    if not cluster.plane.real_node:
        pytest.skip(f"no real node here: {cluster.plane.node_mode()}")
    assert node.probe() is None

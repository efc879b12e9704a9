"""Proof that the local control plane is a real Kubernetes: controllers, scheduler, kwok
nodes, garbage collection, CEL validation, TLS with authentication."""

from __future__ import annotations

import json
import os
import ssl
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from pimlab.cluster import build
from pimlab.cluster.layout import KWOK_NODES
from pimlab.cluster.local_cluster import LocalCluster
from pimlab.cluster.procs import ClusterError, pid_alive, spare_port_offset
from pimlab.waiting import wait_for


def pods(cluster, namespace: str, selector: str) -> list[dict]:
    out = cluster.kubectl("get", "pods", "-n", namespace, "-l", selector, "-o", "json").stdout
    return json.loads(out)["items"]


def ready(pod: dict) -> bool:
    conditions = {c["type"]: c["status"] for c in pod.get("status", {}).get("conditions", [])}
    return pod.get("status", {}).get("phase") == "Running" and conditions.get("Ready") == "True"


def statefulset(name: str, replicas: int) -> dict:
    return {
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas, "serviceName": name,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "main", "image": "registry.invalid/none:1"}]},
            },
        },
    }


def test_every_component_reports_its_real_version(cluster):
    version = json.loads(cluster.kubectl("version", "-o", "json").stdout)
    expected = build.KUBERNETES_VERSION
    assert version["serverVersion"]["gitVersion"] == expected
    assert version["clientVersion"]["gitVersion"] == expected
    for binary in ("kube-controller-manager", "kube-scheduler"):
        out = os.popen(f"{cluster.bin_dir / binary} --version").read()
        assert expected in out, out
    etcd = os.popen(f"{cluster.bin_dir / 'etcd'} --version").read()
    assert "etcd Version: 3.6" in etcd, etcd
    kwok = os.popen(f"{cluster.bin_dir / 'kwok'} --version").read()
    assert f"kwok version {build.KWOK_VERSION}" in kwok, kwok


def test_two_kwok_nodes_are_ready(cluster):
    nodes = [n for n in json.loads(cluster.kubectl("get", "nodes", "-o", "json").stdout)["items"]
             if n["metadata"]["name"] in KWOK_NODES]
    assert len(nodes) == 2
    for node in nodes:
        conditions = {c["type"]: c["status"] for c in node["status"]["conditions"]}
        assert conditions["Ready"] == "True", node["metadata"]["name"]
        assert node["metadata"]["annotations"]["kwok.x-k8s.io/node"] == "fake"
    leases = json.loads(cluster.kubectl("get", "leases", "-n", "kube-node-lease", "-o", "json").stdout)
    assert {n["metadata"]["name"] for n in nodes} <= {l["metadata"]["name"] for l in leases["items"]}, \
        "without node leases the node-lifecycle controller marks every pod NotReady"


def test_statefulset_gets_three_running_ready_pods_on_kwok_nodes(cluster, namespace):
    cluster.apply(statefulset("db", 3), "-n", namespace)
    running = wait_for(
        lambda: [p for p in pods(cluster, namespace, "app=db") if ready(p)]
        if len([p for p in pods(cluster, namespace, "app=db") if ready(p)]) == 3 else None,
        timeout=90, what="3 ready pods",
    )
    assert sorted(p["metadata"]["name"] for p in running) == ["db-0", "db-1", "db-2"]
    assert {p["spec"]["nodeName"] for p in running} <= {"kwok-node-0", "kwok-node-1"}
    sts = json.loads(cluster.kubectl("get", "sts", "db", "-n", namespace, "-o", "json").stdout)
    wait_for(lambda: json.loads(cluster.kubectl(
        "get", "sts", "db", "-n", namespace, "-o", "json").stdout)["status"].get("readyReplicas") == 3,
        what="readyReplicas=3")
    assert sts["metadata"]["name"] == "db"


def test_deleted_pod_is_recreated_by_its_controller(cluster, namespace):
    cluster.apply(statefulset("web", 1), "-n", namespace)
    first = wait_for(lambda: next((p for p in pods(cluster, namespace, "app=web") if ready(p)), None),
                     timeout=90, what="web-0 ready")
    cluster.kubectl("delete", "pod", "web-0", "-n", namespace, "--wait=false")
    second = wait_for(
        lambda: next((p for p in pods(cluster, namespace, "app=web")
                      if ready(p) and p["metadata"]["uid"] != first["metadata"]["uid"]), None),
        timeout=90, what="a new web-0",
    )
    assert second["metadata"]["name"] == "web-0"


def test_deleting_an_owner_garbage_collects_its_children(cluster, namespace):
    cluster.apply({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "owner"}},
                  "-n", namespace)
    owner = cluster.get("configmap", "owner", namespace)
    child = {
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "child", "ownerReferences": [{
            "apiVersion": "v1", "kind": "ConfigMap", "name": "owner",
            "uid": owner["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}]},
        "data": {"k": "v"},
    }
    cluster.apply(child, "-n", namespace)
    assert cluster.get("configmap", "child", namespace) is not None
    cluster.kubectl("delete", "configmap", "owner", "-n", namespace)
    wait_for(lambda: cluster.get("configmap", "child", namespace) is None, timeout=60,
             what="the garbage collector to delete the child")


WIDGET_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
    "metadata": {"name": "widgets.probe.pimlab.test"},
    "spec": {
        "group": "probe.pimlab.test", "scope": "Namespaced",
        "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
        "versions": [{
            "name": "v1", "served": True, "storage": True,
            "schema": {"openAPIV3Schema": {
                "type": "object",
                "properties": {"spec": {
                    "type": "object",
                    "properties": {"min": {"type": "integer"}, "max": {"type": "integer"}},
                    "x-kubernetes-validations": [{
                        "rule": "self.min <= self.max",
                        "message": "spec.min must not exceed spec.max"}],
                }},
            }},
        }],
    },
}


def test_crd_with_cel_rule_refuses_an_invalid_object_with_the_rules_message(cluster, namespace):
    cluster.apply(WIDGET_CRD)
    cluster.kubectl("wait", "--for=condition=Established", "crd/widgets.probe.pimlab.test",
                    "--timeout=60s")
    good = {"apiVersion": "probe.pimlab.test/v1", "kind": "Widget",
            "metadata": {"name": "ok"}, "spec": {"min": 1, "max": 2}}
    bad = {**good, "metadata": {"name": "bad"}, "spec": {"min": 5, "max": 2}}
    cluster.apply(good, "-n", namespace)
    refused = cluster.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(bad),
                              check=False)
    assert refused.returncode != 0
    assert "spec.min must not exceed spec.max" in refused.stderr
    assert cluster.get("widget", "bad", namespace) is None


def test_every_thirdparty_crd_installs_and_is_established(cluster, thirdparty_crds):
    assert len(thirdparty_crds) == 14
    for name in thirdparty_crds:
        crd = json.loads(cluster.kubectl("get", "crd", name, "-o", "json").stdout)
        conditions = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
        assert conditions.get("Established") == "True", name


def test_apiserver_refuses_anonymous_and_serves_only_tls_on_loopback(cluster):
    plane = cluster.plane
    context = ssl.create_default_context(cafile=str(plane.ca))
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{plane.layout.server}/api", context=context, timeout=5)
    assert refused.value.code == 401
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{plane.layout.ports.apiserver}/api", timeout=5)
    listening = _listening_ports()
    for port in (plane.layout.ports.apiserver, plane.layout.ports.etcd_client):
        assert listening.get(port) == {"127.0.0.1"}, (port, listening.get(port))


def _listening_ports() -> dict[int, set[str]]:
    """Local addresses of listening TCP sockets, from /proc/net/tcp{,6}."""
    found: dict[int, set[str]] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A":  # LISTEN
                continue
            address, port = fields[1].split(":")
            if len(address) == 8:
                ip = ".".join(str(int(address[i:i + 2], 16)) for i in (6, 4, 2, 0))
            else:
                ip = "::" if set(address) == {"0"} else address
            found.setdefault(int(port, 16), set()).add(ip)
    return found


def test_up_is_idempotent_and_keeps_the_same_cluster(cluster):
    before = cluster.plane.layout.cluster_id_file.read_text()
    pids = cluster.plane.running()
    LocalCluster(cluster.plane.layout.root).up()
    assert cluster.plane.layout.cluster_id_file.read_text() == before
    assert cluster.plane.running() == pids


def test_a_second_cluster_starts_and_down_leaves_nothing_behind(cluster, tmp_path, monkeypatch):
    """A throwaway control plane in another tree on other ports: up, use, down, gone."""
    monkeypatch.setenv("PIMLAB_PORT_OFFSET", spare_port_offset())
    monkeypatch.setenv("PIMLAB_NODE", "kwok")  # one real node per machine: this tree's
    other = LocalCluster(tmp_path)
    try:
        other.up()
        assert other.healthy()
        assert other.kubectl("get", "nodes").returncode == 0
        pids = other.running()
        assert len(pids) == 5
    finally:
        other.down(quiet=True)
    assert not other.running()
    for name, pid in pids.items():
        assert not pid_alive(pid, other.layout.bin / name) and not pid_alive(
            pid, cluster.bin_dir / name), f"{name} still runs"
    assert sorted(p.name for p in (tmp_path / ".lab").iterdir()) == []


def test_a_port_in_use_is_named_in_the_error(cluster, tmp_path, monkeypatch):
    """With the ports of the running cluster taken, a second `up` says which and how to move."""
    blocked = LocalCluster(tmp_path)
    with pytest.raises(ClusterError, match=r"port 127\.0\.0\.1:\d+ is already in use.*PIMLAB_PORT_OFFSET"):
        blocked.up()
    blocked.down(quiet=True)


def test_a_component_that_fails_to_start_is_named_with_its_log(cluster, tmp_path, monkeypatch):
    """etcd cannot use a data directory that is a plain file: `up` says so and where to look."""
    monkeypatch.setenv("PIMLAB_PORT_OFFSET", spare_port_offset(2000))
    monkeypatch.setenv("PIMLAB_NODE", "kwok")
    broken = LocalCluster(tmp_path)
    (tmp_path / ".lab/cluster").mkdir(parents=True)
    (tmp_path / ".lab/cluster/etcd").write_text("not a directory")
    try:
        with pytest.raises(ClusterError) as failed:
            broken.up()
        message = str(failed.value)
        assert message.startswith("etcd ")
        assert str(tmp_path / ".lab/cluster/logs/etcd.log") in message
    finally:
        broken.down(quiet=True)
    assert not broken.running()


def test_a_cluster_that_is_not_this_trees_own_is_refused(cluster, tmp_path):
    other = LocalCluster(tmp_path)
    other.layout.lab.mkdir()
    other.layout.bin.symlink_to(cluster.bin_dir)
    # same server, but not the id this tree recorded when it started the cluster
    other.layout.kubeconfig.write_text(cluster.kubeconfig.read_text())
    assert "does not carry this tree's control-plane id" in other.foreign_reason()
    other.layout.state.mkdir()
    other.layout.cluster_id_file.write_text("someone-elses-cluster")
    assert "does not carry this tree's control-plane id" in other.foreign_reason()
    # a kubeconfig that points anywhere else
    config = yaml.safe_load(cluster.kubeconfig.read_text())
    config["clusters"][0]["cluster"]["server"] = "https://10.0.0.1:6443"
    other.layout.kubeconfig.write_text(yaml.safe_dump(config))
    assert "points to ['https://10.0.0.1:6443']" in other.foreign_reason()
    assert cluster.plane.foreign_reason() is None

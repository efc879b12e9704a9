"""The operator as a local process for the control-plane tests."""

from __future__ import annotations

import copy
import json
import socket
import time
from contextlib import contextmanager

import pytest

from pimlab.cluster.handle import placed
from pimlab.cluster.lab import sample_documents
from pimlab.cluster.layout import KWOK_NAMESPACE_ANNOTATIONS
from pimlab.cluster.local_operator import OperatorProcess, install_operator_rbac, write_operator_kubeconfig
from pimlab.waiting import wait_for


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def operator_process(cluster, tmp_path_factory, prefix: str, *, namespace: str | None = None,
                     metrics_port: int | None = None, env: dict[str, str] | None = None,
                     documents: list[dict] = ()):
    """The operator as a local process, as its own ServiceAccount (so its RBAC is what it is
    held to), watching one fresh namespace of its own; `.namespace` names it.

    `env`: variables the operator starts with (e.g. a short PIMLAB_SLO_REFRESH_SECONDS). Its
    operator namespace, where the chaos kill switch lives (`.operator_namespace`), is
    `<namespace>-operator`, made here, unless `env` names another (PIMLAB_OPERATOR_NAMESPACE):
    tests running at once never pause each other's chaos.
    `documents`: applied once the operator runs, each placed in the namespace; a Namespace
    among them is the namespace itself (its labels, e.g. a node selector, kept). A namespace
    that places its pods nowhere else tolerates the kwok nodes' taint: its pods are simulated
    there, also beside a real node."""
    install_operator_rbac(cluster.plane)
    workdir = tmp_path_factory.mktemp(prefix)
    kubeconfig = workdir / "kubeconfig"
    write_operator_kubeconfig(cluster.plane, kubeconfig)
    namespace = namespace or f"{prefix}-{int(time.time()) % 100000}"
    documents = sorted(copy.deepcopy(list(documents)), key=lambda doc: doc["kind"] != "Namespace")
    for doc in documents:
        doc["metadata"]["name" if doc["kind"] == "Namespace" else "namespace"] = namespace
        if doc["kind"] == "Namespace" and not placed(doc):
            doc["metadata"].setdefault("annotations", {}).update(KWOK_NAMESPACE_ANNOTATIONS)
    if not any(doc["kind"] == "Namespace" for doc in documents):
        cluster.apply({"apiVersion": "v1", "kind": "Namespace",
                       "metadata": {"name": namespace, "annotations": KWOK_NAMESPACE_ANNOTATIONS}})
    env = {"PIMLAB_OPERATOR_NAMESPACE": f"{namespace}-operator", **(env or {})}
    operator_namespace = env["PIMLAB_OPERATOR_NAMESPACE"]
    cluster.kubectl("create", "namespace", operator_namespace, check=False)
    process = OperatorProcess(kubeconfig, workdir / "operator.log", workdir / "operator.pid",
                              metrics_port=metrics_port or free_port(), health_port=free_port(),
                              namespaces=(namespace,), env=env)
    process.start()
    process.namespace, process.operator_namespace = namespace, operator_namespace
    try:
        if documents:
            cluster.apply(documents)
        yield process
    finally:
        # deleted while the operator runs, so it can release what it holds (a drill's load, a
        # fault) before it stops; a Lab's and Shards' finalizers may stay (the namespace then
        # stays Terminating: the run's cluster goes at the end)
        cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and cluster.kubectl("get", "pimlab", "-n", namespace, "-o", "name",
                                                              check=False).stdout.strip():
            time.sleep(2)
        process.stop()
        if operator_namespace.startswith(namespace):
            cluster.kubectl("delete", "namespace", operator_namespace, "--wait=false", check=False)


def real_nodes(cluster) -> list[str]:
    nodes = json.loads(cluster.kubectl("get", "nodes", "-o", "json").stdout)["items"]
    return [n["metadata"]["name"] for n in nodes
            if (n["metadata"].get("annotations") or {}).get("kwok.x-k8s.io/node") != "fake"]


def require_real_node(cluster) -> str:
    found = real_nodes(cluster)
    if not found:
        pytest.skip("no real node in this cluster (every node is a kwok node annotated kwok.x-k8s.io/node=fake: "
                    "pods would not run); PIMLAB_NODE=real asks for one, and another tree may hold it")
    return found[0]


@contextmanager
def real_lab(cluster, tmp_path_factory, prefix: str, lab_spec: dict | None = None,
             env: dict[str, str] | None = None):
    """The sample lab as `make lab` runs it on the real node (`sample_documents(real_node=True)`:
    PostgreSQL shards, the image built here, its namespace placed on the node), in a fresh
    namespace with a local operator watching only it; `lab_spec` is merged into the Lab's spec.
    Yields the operator process (`.namespace`) once the Lab and the Shards are Ready and seeded."""
    docs = [d for d in sample_documents(real_node=True) if d["kind"] in ("Namespace", "Lab", "Shard")]
    for doc in docs:
        if doc["kind"] == "Lab":
            doc["spec"].update(lab_spec or {})
    with operator_process(cluster, tmp_path_factory, prefix, env=env, documents=docs) as process:
        namespace = process.namespace
        wait_for(lambda: condition(cluster.get("lab", "pim", namespace)).get("status") == "True",
                 timeout=600, what="the sample Lab to become Ready on the real node")
        cluster.kubectl("wait", "--for=condition=Ready", "shard", "--all", "-n", namespace, "--timeout=300s",
                        timeout=310)
        seeded = wait_for(lambda: (p := cluster.kubectl("exec", "-n", namespace, "deployment/pim-admin", "--",
                                                        "pimlab", "seed", check=False, timeout=300)).returncode == 0
                          and p.stdout, timeout=180, interval=5, what="the shards to take the seed")
        assert '"seed": 42' in seeded, seeded
        yield process


def condition(obj: dict | None, ctype: str = "Ready") -> dict:
    return next((c for c in ((obj or {}).get("status") or {}).get("conditions") or [] if c["type"] == ctype), {})

"""The operator as a local process for the control-plane tests."""

from __future__ import annotations

import copy
import os
import socket
import time
from contextlib import contextmanager

from pimlab.cluster.local_lab import OperatorProcess, install_operator_rbac, write_operator_kubeconfig


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def _environment(env: dict[str, str]):
    """`env` set in this process only while the operator starts (it inherits it)."""
    previous = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name)
            else:
                os.environ[name] = value


@contextmanager
def operator_process(cluster, tmp_path_factory, prefix: str, *, namespace: str | None = None,
                     metrics_port: int | None = None, env: dict[str, str] | None = None,
                     documents: list[dict] = ()):
    """The operator as a local process, as its own ServiceAccount (so its RBAC is what it is
    held to), watching one fresh namespace of its own; `.namespace` names it.

    `env`: variables the operator starts with (e.g. a short PIMLAB_SLO_REFRESH_SECONDS).
    `documents`: applied once the operator runs, each placed in the namespace; a Namespace
    among them is the namespace itself (its labels, e.g. a node selector, kept)."""
    install_operator_rbac(cluster.plane)
    workdir = tmp_path_factory.mktemp(prefix)
    kubeconfig = workdir / "kubeconfig"
    write_operator_kubeconfig(cluster.plane, kubeconfig)
    namespace = namespace or f"{prefix}-{int(time.time()) % 100000}"
    documents = sorted(copy.deepcopy(list(documents)), key=lambda doc: doc["kind"] != "Namespace")
    for doc in documents:
        doc["metadata"]["name" if doc["kind"] == "Namespace" else "namespace"] = namespace
    if not any(doc["kind"] == "Namespace" for doc in documents):
        cluster.kubectl("create", "namespace", namespace)
    process = OperatorProcess(kubeconfig, workdir / "operator.log", workdir / "operator.pid",
                              metrics_port=metrics_port or free_port(), health_port=free_port(),
                              namespaces=(namespace,))
    with _environment(env or {}):
        process.start()
    process.namespace = namespace
    try:
        if documents:
            cluster.apply(documents)
        yield process
    finally:
        process.stop()
        cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)

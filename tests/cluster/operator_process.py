"""The operator as a local process for the control-plane tests."""

from __future__ import annotations

import socket
import time
from contextlib import contextmanager

from pimlab.cluster.local_lab import OperatorProcess, install_operator_rbac, write_operator_kubeconfig


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def operator_process(cluster, tmp_path_factory, prefix: str):
    """The operator as a local process, as its own ServiceAccount (so its RBAC is what it is
    held to), watching one fresh namespace of its own; `.namespace` names it."""
    install_operator_rbac(cluster.plane)
    workdir = tmp_path_factory.mktemp(prefix)
    kubeconfig = workdir / "kubeconfig"
    write_operator_kubeconfig(cluster.plane, kubeconfig)
    namespace = f"{prefix}-{int(time.time()) % 100000}"
    cluster.kubectl("create", "namespace", namespace)
    process = OperatorProcess(kubeconfig, workdir / "operator.log", workdir / "operator.pid",
                              metrics_port=free_port(), health_port=free_port(), namespaces=(namespace,))
    process.start()
    process.namespace = namespace
    try:
        yield process
    finally:
        process.stop()
        cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)

"""The operator's settings: one frozen object, read once at start from `PIMLAB_*` environment
variables and the `pimlab operator run` flags, then handed down (`kinds.register` gives it to
every reconcile through `reconcile.Context`). No other module reads the environment.

The variables (docs/slo.md, docs/runbooks/chaos.md, docs/architecture.md):
- PIMLAB_PROMETHEUS_URL: the Prometheus of SLOs whose namespace has no Lab naming one
  (`--prometheus-url` takes precedence);
- PIMLAB_PROMETHEUS_TIMEOUT: seconds one Prometheus request may take (5);
- PIMLAB_SLO_REFRESH_SECONDS: how often an SLO that names a Prometheus reads its budget (30);
- PIMLAB_OPERATOR_NAMESPACE: the operator's own namespace, never a chaos target and the home
  of the chaos kill switch (pim-system);
- PIMLAB_CRI_SOCKET: the node's containerd socket for containerKill (default: the local lab's);
- PIMLAB_HOME: the project tree (templates/, crds/, samples/); the image sets /app;
- KUBERNETES_SERVICE_HOST/_PORT (in a pod, with its ServiceAccount), else KUBECONFIG.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from pimlab.cluster.layout import Layout

SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")
PROMETHEUS_TIMEOUT_SECONDS = 5.0
SLO_REFRESH_SECONDS = 30.0
OPERATOR_NAMESPACE = "pim-system"


def _env(environ: Mapping[str, str], name: str) -> str | None:
    return environ.get(name) or None


def project_home(environ: Mapping[str, str] = os.environ) -> Path:
    """The project tree (templates/, crds/, samples/): $PIMLAB_HOME in the image, else the
    tree this package is installed from (editable)."""
    home = _env(environ, "PIMLAB_HOME")
    return Path(home) if home else Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class ApiServer:
    """How the apiserver is reached: in a pod, its address from the service environment and
    the pod's ServiceAccount (`in_cluster_url` set); elsewhere, a kubeconfig file."""

    in_cluster_url: str | None = None
    kubeconfig: Path | None = None


def api_server(environ: Mapping[str, str] = os.environ) -> ApiServer:
    host = _env(environ, "KUBERNETES_SERVICE_HOST")
    if host and (SERVICE_ACCOUNT / "token").exists():
        port = _env(environ, "KUBERNETES_SERVICE_PORT") or "443"
        return ApiServer(in_cluster_url=f"https://{'[' + host + ']' if ':' in host else host}:{port}")
    return ApiServer(kubeconfig=Path(_env(environ, "KUBECONFIG") or Path.home() / ".kube" / "config"))


@dataclass(frozen=True)
class Settings:
    """What one operator process runs with; `load_settings` builds it."""

    home: Path
    api_server: ApiServer = field(default_factory=ApiServer)
    namespaces: tuple[str, ...] = ()
    host: str = "0.0.0.0"
    metrics_port: int = 9095
    health_port: int = 8081
    log_format: str = "json"
    verbose: bool = False
    prometheus_url: str | None = None
    prometheus_timeout_seconds: float = PROMETHEUS_TIMEOUT_SECONDS
    slo_refresh_seconds: float = SLO_REFRESH_SECONDS
    operator_namespace: str = OPERATOR_NAMESPACE
    #: None: containerKill is refused with a message naming PIMLAB_CRI_SOCKET
    cri_socket: Path | None = None


def load_settings(environ: Mapping[str, str] = os.environ, *, prometheus_url: str | None = None,
                  **flags) -> Settings:
    """The environment, then the flags of `pimlab operator run` (`flags`: the other fields by
    name); `prometheus_url` (the flag) wins over $PIMLAB_PROMETHEUS_URL."""
    home = project_home(environ)
    cri_socket = _env(environ, "PIMLAB_CRI_SOCKET")
    return Settings(
        home=home,
        api_server=api_server(environ),
        prometheus_url=prometheus_url or _env(environ, "PIMLAB_PROMETHEUS_URL"),
        prometheus_timeout_seconds=float(_env(environ, "PIMLAB_PROMETHEUS_TIMEOUT") or PROMETHEUS_TIMEOUT_SECONDS),
        slo_refresh_seconds=float(_env(environ, "PIMLAB_SLO_REFRESH_SECONDS") or SLO_REFRESH_SECONDS),
        operator_namespace=_env(environ, "PIMLAB_OPERATOR_NAMESPACE") or OPERATOR_NAMESPACE,
        # where the operator runs beside the local lab's node: that node's containerd
        cri_socket=Path(cri_socket) if cri_socket else Layout(home).containerd_socket,
        **flags,
    )

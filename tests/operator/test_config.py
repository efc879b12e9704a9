"""The operator's settings: every documented PIMLAB_* variable and its default, read once into
one object; the `pimlab operator run` flags over the environment."""

from __future__ import annotations

from pathlib import Path

from pimlab.cluster.layout import Layout
from pimlab_operator.config import ApiServer, load_settings, project_home


def test_the_defaults_where_nothing_is_set():
    settings = load_settings({})
    assert (settings.prometheus_url, settings.prometheus_timeout_seconds, settings.slo_refresh_seconds,
            settings.operator_namespace) == (None, 5.0, 30.0, "pim-system")
    assert settings.home == project_home({}) and (settings.home / "templates").is_dir()
    assert settings.cri_socket == Layout(settings.home).containerd_socket  # the local lab's node
    assert settings.api_server == ApiServer(kubeconfig=Path.home() / ".kube" / "config")


def test_every_documented_variable_is_read():
    settings = load_settings({
        "PIMLAB_PROMETHEUS_URL": "http://prometheus:9090", "PIMLAB_PROMETHEUS_TIMEOUT": "2.5",
        "PIMLAB_SLO_REFRESH_SECONDS": "2", "PIMLAB_OPERATOR_NAMESPACE": "ops",
        "PIMLAB_CRI_SOCKET": "/run/containerd/containerd.sock", "PIMLAB_HOME": "/app", "KUBECONFIG": "/k/config",
    })
    assert (settings.prometheus_url, settings.prometheus_timeout_seconds, settings.slo_refresh_seconds,
            settings.operator_namespace) == ("http://prometheus:9090", 2.5, 2.0, "ops")
    assert settings.cri_socket == Path("/run/containerd/containerd.sock") and settings.home == Path("/app")
    assert settings.api_server == ApiServer(kubeconfig=Path("/k/config"))


def test_the_flags_win_over_the_environment():
    settings = load_settings({"PIMLAB_PROMETHEUS_URL": "http://from-env"}, prometheus_url="http://from-flag",
                             namespaces=("lab",), metrics_port=19095, verbose=True)
    assert settings.prometheus_url == "http://from-flag"
    assert (settings.namespaces, settings.metrics_port, settings.verbose) == (("lab",), 19095, True)
    assert load_settings({"PIMLAB_PROMETHEUS_URL": "http://from-env"}).prometheus_url == "http://from-env"

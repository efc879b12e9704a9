"""Run the operator: kopf with our handlers, a health endpoint, Prometheus metrics and JSON
logs. The same entry point serves the image (`pimlab operator run`) and the local lab."""

from __future__ import annotations

import logging

import kopf
import prometheus_client


def run(*, namespaces: list[str], host: str, metrics_port: int, health_port: int,
        log_format: str = "json", verbose: bool = False) -> None:
    from pimlab_operator import kinds

    kinds.register()

    kopf.configure(
        verbose=verbose,
        log_format=kopf.LogFormat.JSON if log_format == "json" else kopf.LogFormat.FULL,
        log_refkey="object" if log_format == "json" else None,
    )
    logging.getLogger("kubernetes.client.rest").setLevel(logging.WARNING)
    prometheus_client.start_http_server(metrics_port, addr=host)
    kopf.run(
        standalone=True,
        clusterwide=not namespaces,
        namespaces=namespaces,
        liveness_endpoint=f"http://{host}:{health_port}/healthz",
    )

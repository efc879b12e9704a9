"""Run the operator: kopf with our handlers, a health endpoint, Prometheus metrics and JSON
logs. The same entry point serves the image (`pimlab operator run`) and the local lab."""

from __future__ import annotations

import logging
import sys

# kopf imports the kubernetes client library whenever it is installed, for conveniences the
# operator does not use (its model classes as owners, its login): ~33 MB of model classes in a
# process whose goal is < 150 MB. The operator talks to the apiserver through `kube`, and kopf
# logs in with its own kubeconfig/ServiceAccount reader, so the library stays out.
sys.modules.setdefault("kubernetes", None)

import kopf  # noqa: E402

from pimlab_operator import kinds, kube, memory, metrics  # noqa: E402
from pimlab_operator.config import Settings  # noqa: E402


class RoutineSuccesses(logging.Filter):
    """Drops kopf's INFO line for every successful timer pass: the failover pass runs every 2 s
    per Shard, and its "Timer 'shard-failover' succeeded." would make up about two thirds of the
    log of an idle lab. A failed pass (ERROR), every handler's outcome and the failover manager's
    own decisions are kept."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.INFO:
            return True
        message = record.getMessage()
        return not (message.startswith("Timer ") and message.endswith(" succeeded."))


def quiet_routine_logs() -> None:
    """The operator's log says what happened, not that nothing did: no line per successful
    timer pass (kopf) or per HTTP request to Prometheus (httpx logs each at INFO). `--verbose`
    keeps everything."""
    logging.getLogger("kopf.objects").addFilter(RoutineSuccesses())
    logging.getLogger("httpx").setLevel(logging.WARNING)


def run(settings: Settings) -> None:
    """Until stopped: every request to the apiserver, every handler and every reconcile with
    `settings`."""
    memory.tune()
    kube.connect(settings.api_server)
    kinds.register(settings)

    json_logs = settings.log_format == "json"
    kopf.configure(
        verbose=settings.verbose,
        log_format=kopf.LogFormat.JSON if json_logs else kopf.LogFormat.FULL,
        log_refkey="object" if json_logs else None,
    )
    if not settings.verbose:
        quiet_routine_logs()
    metrics.serve(settings.metrics_port, settings.host)
    kopf.run(
        standalone=True,
        clusterwide=not settings.namespaces,
        namespaces=list(settings.namespaces),
        liveness_endpoint=f"http://{settings.host}:{settings.health_port}/healthz",
    )

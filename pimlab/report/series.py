"""The Prometheus side of a drill report: the PromQL each figure plots, and the range queries
over the drill's own window (`status.window`). Every series is what the services export
(`api_services/telemetry.py`) or what an SLO's own SLI says (`slo.desired.event_rate_queries`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime

from pimlab_operator.slo import prometheus
from pimlab_operator.slo.desired import event_rate_queries
from pimlab_operator.slo.model import SLOSpec

#: The rate window of every query: four scrapes at the lab's 15 s scrape interval.
RATE_WINDOW = "1m"
#: Points per series over the window (the step is the window's length over this, at least MIN_STEP).
POINTS = 150
MIN_STEP_SECONDS = 2.0
QUANTILES = (0.5, 0.95, 0.99)


def gateway_selector(lab: str | None, namespace: str) -> str:
    """The label matchers of the gateway's series of one Lab: what the clients (the persona
    engine) felt. `service` is the metric's own label where Prometheus keeps it (local runs) and
    the Kubernetes Service's name `<lab>-gateway` where a ServiceMonitor target label replaces it;
    `namespace` is absent in local runs (the empty alternative matches an absent label)."""
    services = "gateway" + (f"|{lab}-gateway" if lab else "")
    return f'service=~"{services}",namespace=~"{namespace}|"'


def latency_query(quantile: float, selector: str) -> str:
    return (f"histogram_quantile({quantile}, sum by (le) "
            f"(rate(pim_http_request_duration_seconds_bucket{{{selector}}}[{RATE_WINDOW}])))")


def throughput_query(selector: str) -> str:
    return f"sum(rate(pim_http_requests_total{{{selector}}}[{RATE_WINDOW}]))"


def server_errors_query(selector: str) -> str:
    return f'sum(rate(pim_http_requests_total{{{selector},status=~"5.."}}[{RATE_WINDOW}]))'


def per_shard_query(selector: str) -> str:
    return f"sum by (shard) (rate(pim_http_requests_total{{{selector}}}[{RATE_WINDOW}]))"


def per_shard_errors_query(selector: str) -> str:
    return f'sum by (shard) (rate(pim_http_requests_total{{{selector},status=~"5.."}}[{RATE_WINDOW}]))'


def slo_queries(spec: SLOSpec) -> tuple[str, str] | None:
    """Bad and total events per second of an SLO's SLI (None for a raw SLI: it has no events).
    No error series at all counts as zero bad events."""
    rates = event_rate_queries(spec, RATE_WINDOW)
    if rates is None:
        return None
    errors, total = rates
    return f"({errors}) or on() vector(0)", total


def step_seconds(start: datetime, end: datetime) -> float:
    return max(MIN_STEP_SECONDS, math.ceil((end - start).total_seconds() / POINTS))


@dataclass
class Series:
    """One plotted line: seconds since the window's start -> value."""

    label: str
    points: list[tuple[float, float]] = field(default_factory=list)


@dataclass
class RangeReader:
    """Range queries over one drill window against one Prometheus; the first failure is kept as
    the reason every later figure is missing (one unreachable Prometheus, one message)."""

    url: str | None
    start: datetime
    end: datetime
    timeout: float = 10.0
    failure: str | None = None

    @property
    def step(self) -> float:
        return step_seconds(self.start, self.end)

    def missing(self) -> str | None:
        """Why no figure from Prometheus can be drawn, or None while it can."""
        if self.failure or self.url:
            return self.failure
        return "no Prometheus to query: the Lab sets no spec.observability.prometheusUrl and no --prometheus was given"

    def series(self, expr: str, label_key: str | None = None, label: str = "") -> list[Series]:
        """The query's series, each labelled by `label_key`'s value (or `label`); [] where it
        cannot be read (then `missing()` says why)."""
        if self.missing():
            return []
        try:
            found = prometheus.query_range(self.url, expr, self.start, self.end, self.step, self.timeout)
        except prometheus.PrometheusUnavailable as error:
            self.failure = f"Prometheus at {self.url} could not be read: {error}"
            return []
        origin = self.start.timestamp()
        return [Series(s["metric"].get(label_key, "?") if label_key else label,
                       [(t - origin, v) for t, v in s["values"]]) for s in found]

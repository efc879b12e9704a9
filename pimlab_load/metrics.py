"""Live Prometheus metrics of one engine, on their own registry and port."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class Metrics:
    def __init__(self, run: str, index: int):
        self.registry = CollectorRegistry()
        labels = {"run": run, "pod": str(index)}
        self._labels = labels
        self.requests = Counter("pimlab_load_requests", "Requests answered or failed, after retries",
                                ["run", "pod", "persona", "journey", "shard", "status"], registry=self.registry)
        self.errors = Counter("pimlab_load_errors", "Requests with an unexpected outcome",
                              ["run", "pod", "persona", "journey"], registry=self.registry)
        self.dropped = Counter("pimlab_load_dropped", "Arrivals or steps not sent: maxInFlight reached",
                               ["run", "pod"], registry=self.registry).labels(**labels)
        self.scheduled = Counter("pimlab_load_scheduled", "Arrivals this engine owned in the schedule",
                                 ["run", "pod"], registry=self.registry).labels(**labels)
        self.retries = Counter("pimlab_load_retries", "Client retries", ["run", "pod"],
                               registry=self.registry).labels(**labels)
        self.in_flight = Gauge("pimlab_load_in_flight", "Requests in flight", ["run", "pod"],
                               registry=self.registry).labels(**labels)
        self.latency = Histogram("pimlab_load_latency_seconds", "Latency from the intended start",
                                 ["run", "pod", "persona", "journey"], buckets=BUCKETS, registry=self.registry)
        self.lag = Histogram("pimlab_load_schedule_lag_seconds", "Intended start to the first send",
                             ["run", "pod"], buckets=BUCKETS, registry=self.registry).labels(**labels)
        self._children: dict[tuple, tuple] = {}

    def serve(self, port: int, host: str = "0.0.0.0") -> None:
        start_http_server(port, addr=host, registry=self.registry)

    def observe(self, persona: str, journey: str, shard: str, status: str, error: bool,
                latency: float, lag: float) -> None:
        key = (persona, journey, shard, status)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = (
                self.requests.labels(**self._labels, persona=persona, journey=journey, shard=shard, status=status),
                self.errors.labels(**self._labels, persona=persona, journey=journey),
                self.latency.labels(**self._labels, persona=persona, journey=journey))
        children[0].inc()
        if error:
            children[1].inc()
        children[2].observe(latency)
        self.lag.observe(lag)

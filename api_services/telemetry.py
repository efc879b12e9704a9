"""All MELTP wiring in one place: request context, JSON logs, Prometheus RED metrics, OTel traces.

Logs, spans and metric exemplars share the trace id, so an SRE can go from a log line to its
trace and to the latency bucket it landed in.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time
from dataclasses import dataclass

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily

from api_services.redaction import redact


@dataclass
class RequestContext:
    request_id: str = "-"
    correlation_id: str | None = None
    user_id: str = "-"
    persona: str = "-"
    shard: str = "none"
    route: str = "-"


_ctx: contextvars.ContextVar[RequestContext | None] = contextvars.ContextVar("pim_request", default=None)


def current_context() -> RequestContext:
    ctx = _ctx.get()
    return ctx if ctx is not None else RequestContext()


def bind_context(ctx: RequestContext):
    return _ctx.set(ctx)


def reset_context(token) -> None:
    _ctx.reset(token)


def trace_ids() -> tuple[str, str]:
    span_ctx = trace.get_current_span().get_span_context()
    if not span_ctx.is_valid:
        return "", ""
    return format(span_ctx.trace_id, "032x"), format(span_ctx.span_id, "016x")


# ---- logs -------------------------------------------------------------------------------------

_STD_ATTRS = set(vars(logging.LogRecord("x", 0, "x", 0, "x", None, None))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with correlation ids, and every string field redacted.

    Built once per record, by the one handler. The short strings a log line repeats (messages,
    routes, methods, service names) are redacted once and remembered; so is the timestamp's second."""

    _CACHE_MAX = 2048
    _SHORT = 64

    def __init__(self):
        super().__init__()
        self._redacted: dict[str, str] = {}
        self._second = (-1, "")

    def _redact(self, text: str) -> str:
        if len(text) > self._SHORT:
            return redact(text)
        out = self._redacted.get(text)
        if out is None:
            if len(self._redacted) >= self._CACHE_MAX:
                self._redacted.clear()
            out = self._redacted[text] = redact(text)
        return out

    def format(self, record: logging.LogRecord) -> str:
        ctx = current_context()
        trace_id, span_id = trace_ids()
        second = int(record.created)
        if second != self._second[0]:
            self._second = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
        out = {
            "ts": f"{self._second[1]}.{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": self._redact(record.getMessage()),
            "trace_id": trace_id, "span_id": span_id,
            "request_id": ctx.request_id, "correlation_id": ctx.correlation_id, "user_id": ctx.user_id,
            "persona": ctx.persona, "shard": ctx.shard,
        }
        for key, value in record.__dict__.items():
            if key not in _STD_ATTRS and key not in out and key != "color_message":
                out[key] = self._redact(value) if isinstance(value, str) else value
        if record.exc_info:
            out["exception"] = redact(self.formatException(record.exc_info))[-2000:]
        return json.dumps(out, default=str)


def setup_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("uvicorn.access",):
        logging.getLogger(noisy).disabled = True
    logging.getLogger("uvicorn.error").propagate = True
    logging.getLogger("uvicorn.error").handlers[:] = []
    logging.getLogger("uvicorn").handlers[:] = []


# ---- metrics ----------------------------------------------------------------------------------

REGISTRY = CollectorRegistry(auto_describe=True)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.3, 0.5, 1.0, 2.5, 5.0)
LABELS = ("service", "route", "method", "persona", "shard", "status")

HTTP_REQUESTS = Counter("pim_http_requests", "HTTP requests by outcome (RED rate/errors).", LABELS, registry=REGISTRY)
HTTP_DURATION = Histogram("pim_http_request_duration_seconds", "HTTP request latency (RED duration).",
                          LABELS, buckets=LATENCY_BUCKETS, registry=REGISTRY)
DB_TX_DURATION = Histogram("pim_db_transaction_duration_seconds", "Duration of one write transaction.",
                           ("shard", "action"), buckets=LATENCY_BUCKETS, registry=REGISTRY)
GROUP_COMMIT_WRITES = Histogram("pim_group_commit_writes",
                                "Writes made durable by one group commit (one fsync on SQLite, one quorum "
                                "acknowledgement on PostgreSQL).", ("shard",), buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=REGISTRY)
SHARD_MAP_VERSION = Gauge("pim_shard_map_version", "Version of the shard map in use.", registry=REGISTRY)
OUTBOX_PUBLISHED = Counter("pim_outbox_published_events", "Outbox events relayed to the event stream.",
                           ("shard",), registry=REGISTRY)
PROJECTED = Counter("pim_projection_applied_events", "Events applied to read models.", ("shard", "event_type"),
                    registry=REGISTRY)
WORKER_UP = Gauge("pim_worker_up", "1 when the worker's last step on the shard succeeded, 0 while it fails.",
                  ("worker", "shard"), registry=REGISTRY)
WORKER_FAILURES = Counter("pim_worker_failures", "Failed worker steps, by shard and kind of cause.",
                          ("worker", "shard", "reason"), registry=REGISTRY)
WORKER_RESTARTS = Counter("pim_worker_restarts", "Worker threads restarted by their supervisor.", ("worker",),
                          registry=REGISTRY)
REFUSED_AUDIT_SUPPRESSED = Counter("pim_refused_audit_suppressed",
                                   "Refused attempts (401/403) not audited because the audit rate limit was hit.",
                                   registry=REGISTRY)


class PipelineCollector:
    """Pipeline gauges computed at scrape time from the shards themselves, so they stay true when
    a worker is stuck: `pim_outbox_pending_events`, `pim_projection_lag_events`, `pim_shard_up`.
    `source()` yields (shard, pending|None, lag|None, up, reason)."""

    def __init__(self):
        self.source = None

    def describe(self):
        return []

    def collect(self):
        pending = GaugeMetricFamily("pim_outbox_pending_events", "Outbox events not yet relayed (counted at scrape).",
                                    labels=["shard"])
        lag = GaugeMetricFamily("pim_projection_lag_events", "Published events not yet projected (counted at scrape).",
                                labels=["shard"])
        up = GaugeMetricFamily("pim_shard_up", "1 when the shard's store answers, 0 otherwise.", labels=["shard"])
        down = GaugeMetricFamily("pim_shard_unhealthy", "1 for an unhealthy shard, labelled with the kind of cause.",
                                 labels=["shard", "reason"])
        source = self.source
        if source is not None:
            for shard, n_pending, n_lag, is_up, reason in source():
                if n_pending is not None:
                    pending.add_metric([shard], n_pending)
                if n_lag is not None:
                    lag.add_metric([shard], n_lag)
                up.add_metric([shard], 1 if is_up else 0)
                if not is_up:
                    down.add_metric([shard, reason], 1)
        return [pending, lag, up, down]


PIPELINE = PipelineCollector()
REGISTRY.register(PIPELINE)
RATE_LIMITED = Counter("pim_rate_limited_requests", "Requests refused by the rate limiter.", ("persona",),
                       registry=REGISTRY)


#: Error statuses whose request counters exist, at 0, from a label set's first request on: an
#: error's first occurrence is then an increase Prometheus sees (rate() and increase() take
#: nothing from a series' first sample), so an outage's first 503s count against the SLOs.
ERROR_STATUSES = ("500", "502", "503", "504")


class RequestMetrics:
    """The RED series of a request, with their children bound once per label set: `.labels()`
    builds and hashes the label tuple under a lock, twice per request, for the same few sets."""

    def __init__(self):
        self._children: dict[tuple, tuple] = {}

    def observe(self, service: str, route: str, method: str, persona: str, shard: str, status: int,
                seconds: float, trace_id: str) -> None:
        key = (service, route, method, persona, shard, status)
        children = self._children.get(key)
        if children is None:
            labels = (service, route, method, persona, shard, str(status))
            for error in ERROR_STATUSES:
                HTTP_REQUESTS.labels(*labels[:-1], error)
            children = self._children.setdefault(key, (HTTP_REQUESTS.labels(*labels), HTTP_DURATION.labels(*labels)))
        exemplar = {"trace_id": trace_id} if trace_id else None
        children[0].inc(exemplar=exemplar)
        children[1].observe(seconds, exemplar=exemplar)


observe_request = RequestMetrics().observe


# ---- traces -----------------------------------------------------------------------------------

_tracer_ready = False


def setup_tracing(service_name: str, otlp_endpoint: str | None) -> None:
    """Trace ids always exist (they feed logs, response headers and exemplars); spans are recorded
    only when they can be exported. With OTLP set, the sampler is the SDK's, from
    `OTEL_TRACES_SAMPLER`/`OTEL_TRACES_SAMPLER_ARG` (default: every trace); without it, no span
    is built at all, since each would be dropped: a non-recording span still carries its ids."""
    global _tracer_ready
    if _tracer_ready:
        return
    provider = TracerProvider(resource=Resource.create({"service.name": f"pim-{service_name}",
                                                        "service.namespace": "pim-sre-lab"}),
                              sampler=None if otlp_endpoint else ALWAYS_OFF)
    if otlp_endpoint:
        # the OTLP exporter (protobuf and an HTTP client) loads only where spans are exported
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        endpoint = otlp_endpoint.rstrip("/")
        if not endpoint.endswith("/v1/traces"):
            endpoint += "/v1/traces"
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    trace.set_tracer_provider(provider)
    _tracer_ready = True


_tracer: trace.Tracer | None = None


def tracer() -> trace.Tracer:
    """The services' tracer, created once: `trace.get_tracer` builds a new Tracer (and its
    instrumentation scope) on every call, which cost ~0.1 ms per span on the hot path."""
    global _tracer
    if _tracer is None or not _tracer_ready:
        _tracer = trace.get_tracer("api_services")
    return _tracer

"""Read an SLO's recorded series and firing alerts from Prometheus's HTTP API (the only I/O of
the error-budget refresh; the arithmetic is in `status.budget_status`).

One instant query fetches every recorded series of the SLO (they share its `slo` and
`slo_namespace` labels), one call lists the alerts. Any failure -- connection refused, timeout,
an HTTP error, a query error -- raises `PrometheusUnavailable` with a one-line reason; the
caller turns it into a condition and never shows an old figure as current.
"""

from __future__ import annotations

import datetime as dt
import math

import httpx

from pimlab_operator.config import PROMETHEUS_TIMEOUT_SECONDS


class PrometheusUnavailable(Exception):
    """Prometheus could not be read; `reason` is one CamelCase word for a condition."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def _get(url: str, path: str, params: dict | None = None, timeout: float = PROMETHEUS_TIMEOUT_SECONDS) -> object:
    try:
        resp = httpx.get(url.rstrip("/") + path, params=params, timeout=timeout)
    except httpx.TimeoutException as error:
        raise PrometheusUnavailable("PrometheusTimeout", f"{url}: no answer in {timeout:g} s ({error})") from error
    except httpx.HTTPError as error:
        raise PrometheusUnavailable("PrometheusUnreachable", f"{url}: {error or type(error).__name__}") from error
    try:
        body = resp.json()
    except ValueError:
        body = None
    if resp.status_code != 200 or not isinstance(body, dict) or body.get("status") != "success":
        detail = body.get("error") if isinstance(body, dict) else resp.text[:200]
        raise PrometheusUnavailable("PrometheusError", f"{url}{path}: HTTP {resp.status_code}: {detail}")
    return body["data"]


def query_range(url: str, expr: str, start: dt.datetime, end: dt.datetime, step_seconds: float,
                timeout: float = PROMETHEUS_TIMEOUT_SECONDS) -> list[dict]:
    """A range query's series: [{"metric": labels, "values": [(unix seconds, value), ...]}], NaN
    and infinite samples dropped; PrometheusUnavailable as `read_slo`."""
    data = _get(url, "/api/v1/query_range", {"query": expr, "start": start.timestamp(), "end": end.timestamp(),
                                             "step": step_seconds}, timeout)
    found = []
    for series in data.get("result", []) if isinstance(data, dict) else []:
        values = [(float(t), float(v)) for t, v in series.get("values", []) if math.isfinite(float(v))]
        found.append({"metric": series.get("metric", {}), "values": values})
    return found


def read_slo(url: str, name: str, namespace: str, timeout: float = PROMETHEUS_TIMEOUT_SECONDS) -> dict:
    """{"series": {metric name: value}, "alerts": [alert dicts of this SLO], "readAt": datetime}.
    NaN and infinite samples are dropped (the rules do not produce them, a foreign rule might).
    `timeout`: seconds each of the two requests may take (the operator's setting)."""
    read_at = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    selector = f'{{__name__=~"slo:.+",slo="{name}",slo_namespace="{namespace}"}}'
    data = _get(url, "/api/v1/query", {"query": selector}, timeout)
    series = {}
    for sample in data.get("result", []) if isinstance(data, dict) else []:
        value = float(sample["value"][1])
        if math.isfinite(value):
            series[sample["metric"]["__name__"]] = value
    alerts = _get(url, "/api/v1/alerts", None, timeout)
    mine = [a for a in (alerts.get("alerts", []) if isinstance(alerts, dict) else [])
            if a.get("labels", {}).get("slo") == name and a.get("labels", {}).get("slo_namespace") == namespace]
    return {"series": series, "alerts": mine, "readAt": read_at}


def instant_value(url: str, query: str, at: dt.datetime, timeout: float = PROMETHEUS_TIMEOUT_SECONDS) -> float | None:
    """The one value `query` has at `at` (the sum of its samples when it has several); None
    when it has no sample or only NaN/infinite ones (no traffic in the window)."""
    data = _get(url, "/api/v1/query", {"query": query, "time": f"{at.timestamp():.3f}"}, timeout)
    values = [float(sample["value"][1]) for sample in (data.get("result", []) if isinstance(data, dict) else [])]
    finite = [value for value in values if math.isfinite(value)]
    return sum(finite) if finite else None

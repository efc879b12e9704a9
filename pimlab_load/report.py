"""What a run measured, and how it travels.

A `Recorder` holds counts and three HDR histograms (microseconds): latency from the intended
start, service time (the last attempt's send to its response) and schedule lag (intended start
to the first send), plus a latency histogram per persona, journey and shard. `summary` turns a
recorder into the JSON summary (percentiles read from the histograms). `to_wire` packs a recorder
into a termination message of at most 4 KiB with HDR's compressed encoding; the operator reads
the pods' messages with `from_wire`, adds them with `merge` and summarises the sum, so
percentiles are never averaged. A recorder also holds the slowest request and, with the ledger,
its read-back and write outages; they travel in the same message (`ledger.wire`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from hdrh.histogram import HdrHistogram

from pimlab_load import ledger
from pimlab_load.ledger import LedgerResult, Outage, Slowest
from pimlab_operator.schema import duration_seconds

#: Histogram range: 1 µs to one hour, 2 significant digits (values within 1 %).
LOWEST_US, HIGHEST_US, DIGITS = 1, 3_600_000_000, 2
#: The kubelet keeps at most this many bytes of a termination message.
WIRE_LIMIT = 4096
WIRE_VERSION = 1
#: Breakdowns, in the order their histograms are given up when the message would not fit.
DIMENSIONS = ("persona", "journey", "shard")
SUMMARY_KEYS = {"persona": "byPersona", "journey": "byJourney", "shard": "byShard"}
#: The engine calls itself the bottleneck past this p99 schedule lag (or on any drop).
SATURATION_LAG_MS = 10.0


def histogram(digits: int = DIGITS) -> HdrHistogram:
    return HdrHistogram(LOWEST_US, HIGHEST_US, digits)


def _record(h: HdrHistogram, micros: float) -> None:
    h.record_value(min(max(int(micros), LOWEST_US), HIGHEST_US))


@dataclass
class Breakdown:
    """Counts and latency of one persona, journey or shard."""

    requests: int = 0
    errors: int = 0
    latency: HdrHistogram | None = field(default_factory=histogram)


@dataclass
class Recorder:
    """Everything one engine (or the merge of several) measured."""

    scheduled: int = 0  # arrivals this engine owned in the schedule, sent or not
    journeys: int = 0  # arrivals that started a journey
    requests: int = 0  # requests answered or failed (after retries), dropped ones excluded
    errors: int = 0  # unexpected outcome: 5xx, 429, timeout, connection error, wrong 2xx/4xx
    dropped: int = 0  # arrivals or steps not sent because maxInFlight was reached
    retries: int = 0
    timeouts: int = 0
    invalid: int = 0  # requests sent malformed on purpose
    elapsed: float = 0.0  # seconds from the schedule's start to the engine's end
    pods: int = 1
    stopped: str = "completed"
    by_status: dict[str, int] = field(default_factory=dict)
    latency: HdrHistogram = field(default_factory=histogram)
    service: HdrHistogram = field(default_factory=histogram)
    lag: HdrHistogram = field(default_factory=histogram)
    by: dict[str, dict[str, Breakdown]] = field(default_factory=lambda: {d: {} for d in DIMENSIONS})
    slowest: Slowest | None = None
    ledger: LedgerResult | None = None  # with spec.ledger: the read-back of the acknowledged writes
    outages: list[Outage] | None = None  # with spec.ledger: the write outages per shard

    def record(self, persona: str, journey: str, shard: str, status: str, error: bool,
               latency_us: float, service_us: float, lag_us: float) -> None:
        self.requests += 1
        self.errors += error
        self.by_status[status] = self.by_status.get(status, 0) + 1
        _record(self.latency, latency_us)
        _record(self.service, service_us)
        _record(self.lag, lag_us)
        for dimension, name in (("persona", persona), ("journey", journey), ("shard", shard)):
            part = self.by[dimension].get(name)
            if part is None:
                part = self.by[dimension][name] = Breakdown()
            part.requests += 1
            part.errors += error
            _record(part.latency, latency_us)


def _ms(h: HdrHistogram | None) -> dict | None:
    if h is None or h.get_total_count() == 0:
        return None
    return {"p50": round(h.get_value_at_percentile(50) / 1000, 3),
            "p95": round(h.get_value_at_percentile(95) / 1000, 3),
            "p99": round(h.get_value_at_percentile(99) / 1000, 3),
            "max": round(h.get_max_value() / 1000, 3)}


def verdicts(summary: dict, thresholds: dict | None) -> list[dict]:
    """Each threshold of the PersonaLoad spec (`p95`, `p99` as durations, `errorRatio`) against
    the summary: limit, observed and whether it held."""
    out = []
    for name in ("p95", "p99"):
        if (thresholds or {}).get(name):
            limit = duration_seconds(thresholds[name]) * 1000
            observed = (summary.get("latencyMs") or {}).get(name)
            out.append({"name": name, "limit": limit, "observed": observed,
                        "met": observed is not None and observed < limit})
    if (thresholds or {}).get("errorRatio") is not None:
        limit, observed = thresholds["errorRatio"], summary.get("errorRatio")
        out.append({"name": "errorRatio", "limit": limit, "observed": observed,
                    "met": observed is not None and observed <= limit})
    return out


def summary(rec: Recorder, thresholds: dict | None = None) -> dict:
    """The JSON summary: counts, rates, the three figures' percentiles (ms), breakdowns,
    status codes, threshold verdicts and whether the engine itself was the bottleneck."""
    out: dict = {
        "stopped": rec.stopped, "pods": rec.pods, "elapsedSeconds": round(rec.elapsed, 3),
        "scheduled": rec.scheduled, "journeys": rec.journeys, "requests": rec.requests,
        "errors": rec.errors, "dropped": rec.dropped, "retries": rec.retries,
        "timeouts": rec.timeouts, "invalidRequests": rec.invalid,
        "errorRatio": round(rec.errors / rec.requests, 6) if rec.requests else 0.0,
        "achievedRate": round(rec.requests / rec.elapsed, 3) if rec.elapsed > 0 else 0.0,
        "byStatus": dict(sorted(rec.by_status.items())),
    }
    for key, h in (("latencyMs", rec.latency), ("serviceTimeMs", rec.service), ("scheduleLagMs", rec.lag)):
        if (value := _ms(h)) is not None:
            out[key] = value
    for dimension in DIMENSIONS:
        parts = rec.by[dimension]
        if parts:
            out[SUMMARY_KEYS[dimension]] = {
                name: {k: v for k, v in (("requests", p.requests), ("errors", p.errors),
                                         ("latencyMs", _ms(p.latency))) if v is not None}
                for name, p in sorted(parts.items())}
    lag_p99 = (out.get("scheduleLagMs") or {}).get("p99", 0.0)
    reasons = []
    if rec.dropped:
        reasons.append(f"{rec.dropped} arrivals dropped at maxInFlight")
    if lag_p99 > SATURATION_LAG_MS:
        reasons.append(f"p99 schedule lag {lag_p99} ms > {SATURATION_LAG_MS} ms")
    out["saturated"] = bool(reasons)
    if reasons:
        out["saturationReason"] = "; ".join(reasons)
    checks = verdicts(out, thresholds)
    if checks:
        out["thresholds"] = checks
        out["thresholdsMet"] = all(c["met"] for c in checks)
    return out


# ------------------------------------------------------------------------------------------
# The termination message: compact JSON, histograms in HDR's compressed (base64) encoding
# ------------------------------------------------------------------------------------------


def _coarse(h: HdrHistogram, digits: int) -> HdrHistogram:
    """The same samples at a lower precision (a smaller encoding)."""
    if digits >= DIGITS:
        return h
    out = histogram(digits)
    counts = list(h.counts)  # one C-level copy; iterating hdrh's Python iterator is 30x slower
    for index, count in enumerate(counts):
        if count:
            out.record_value(h.get_value_from_index(index), count)
    return out


def _encode(h: HdrHistogram | None, digits: int) -> str | None:
    if h is None or h.get_total_count() == 0:
        return None
    return _coarse(h, digits).encode().decode("ascii")


def to_wire(rec: Recorder, index: int = 0, of: int = 1, limit: int = WIRE_LIMIT) -> str:
    """The recorder as a termination message of at most `limit` bytes: the ledger's share first
    (at most `ledger.WIRE_BUDGET`), then the histograms at 2 significant digits, then 1; if
    they still do not fit, the breakdown histograms are given up (shards, then journeys, then
    personas; their counts stay) and the message says which."""
    extra = ledger.wire(rec.ledger, rec.outages, rec.slowest)
    counts = {"scheduled": rec.scheduled, "journeys": rec.journeys, "requests": rec.requests,
              "errors": rec.errors, "dropped": rec.dropped, "retries": rec.retries,
              "timeouts": rec.timeouts, "invalid": rec.invalid}
    for digits in (2, 1):
        main = {"latency": _encode(rec.latency, digits), "service": _encode(rec.service, digits),
                "lag": _encode(rec.lag, digits)}
        by = {d: {name: [p.requests, p.errors, _encode(p.latency, digits)] for name, p in sorted(rec.by[d].items())}
              for d in DIMENSIONS}
        dropped_dims: list[str] = []
        for give_up in (None, *reversed(DIMENSIONS)):
            if give_up:
                dropped_dims.append(give_up)
                by[give_up] = {name: [v[0], v[1], None] for name, v in by[give_up].items()}
            message = json.dumps({"v": WIRE_VERSION, "pod": [index, of], "stopped": rec.stopped,
                                  "elapsed": round(rec.elapsed, 3), "digits": digits, "n": counts,
                                  "status": rec.by_status, "h": main, "by": by,
                                  **({"approx": dropped_dims} if dropped_dims else {}), **extra},
                                 separators=(",", ":"), sort_keys=True)
            if len(message.encode()) <= limit:
                return message
            if digits == 2:
                break  # try one digit before giving up any breakdown
    # Even the counts alone do not fit (thousands of status codes or names): keep the totals.
    return json.dumps({"v": WIRE_VERSION, "pod": [index, of], "stopped": rec.stopped,
                       "elapsed": round(rec.elapsed, 3), "digits": 1, "n": counts, "status": {},
                       "h": {"latency": _encode(rec.latency, 1)}, "by": {}, "approx": list(DIMENSIONS), **extra},
                      separators=(",", ":"))


class WireError(ValueError):
    """A termination message that is not an engine report."""


def _decode(text: str | None) -> HdrHistogram | None:
    if not text:
        return None
    try:
        return HdrHistogram.decode(text.encode("ascii"))
    except Exception as error:  # hdrh raises several types on corrupt input
        raise WireError(f"histogram does not decode: {error}") from None


def from_wire(message: str) -> tuple[Recorder, tuple[int, int], list[str]]:
    """An engine's termination message -> its recorder, (pod index, pods) and the breakdowns
    whose histograms it had to leave out."""
    try:
        data = json.loads(message)
    except ValueError:
        raise WireError("not JSON") from None
    if not isinstance(data, dict) or data.get("v") != WIRE_VERSION:
        raise WireError(f"not an engine report of version {WIRE_VERSION}")
    try:
        n = data["n"]
        rec = Recorder(scheduled=int(n["scheduled"]), journeys=int(n["journeys"]), requests=int(n["requests"]),
                       errors=int(n["errors"]), dropped=int(n["dropped"]), retries=int(n["retries"]),
                       timeouts=int(n["timeouts"]), invalid=int(n["invalid"]), elapsed=float(data["elapsed"]),
                       stopped=str(data["stopped"]), by_status={str(k): int(v) for k, v in data["status"].items()})
        for key, attr in (("latency", "latency"), ("service", "service"), ("lag", "lag")):
            h = _decode(data["h"].get(key))
            setattr(rec, attr, h if h is not None else histogram(1))
        for dimension in DIMENSIONS:
            for name, (requests, errors, encoded) in (data["by"].get(dimension) or {}).items():
                rec.by[dimension][name] = Breakdown(int(requests), int(errors), _decode(encoded))
        rec.ledger, rec.outages, rec.slowest = ledger.from_wire(data)
        index, of = (int(x) for x in data["pod"])
    except (KeyError, TypeError, ValueError) as error:
        if isinstance(error, WireError):
            raise
        raise WireError(f"malformed report: {error!r}"[:200]) from None
    if min(rec.requests, rec.errors, rec.dropped, rec.scheduled) < 0:
        raise WireError("negative counts")
    return rec, (index, of), list(data.get("approx") or [])


def _add(target: HdrHistogram | None, source: HdrHistogram | None) -> HdrHistogram | None:
    if target is None or source is None:
        return None  # one side lacks the histogram: the merge cannot claim percentiles
    merged = histogram(min(target.significant_figures, source.significant_figures))
    merged.add(target)
    merged.add(source)
    return merged


def merge(recorders: list[Recorder]) -> Recorder:
    """The recorders of several pods as one: counts add up, histograms add bucket by bucket
    (so percentiles are those of the combined samples), the elapsed time is the longest, the
    slowest request is the slowest of all; ledgers and outages merge as `ledger` says."""
    out = Recorder(pods=0, stopped="completed")
    first = True
    for rec in recorders:
        for name in ("scheduled", "journeys", "requests", "errors", "dropped", "retries", "timeouts", "invalid"):
            setattr(out, name, getattr(out, name) + getattr(rec, name))
        out.pods += rec.pods
        out.elapsed = max(out.elapsed, rec.elapsed)
        if rec.stopped != "completed":
            out.stopped = rec.stopped
        for status, count in rec.by_status.items():
            out.by_status[status] = out.by_status.get(status, 0) + count
        for attr in ("latency", "service", "lag"):
            setattr(out, attr, getattr(rec, attr) if first else _add(getattr(out, attr), getattr(rec, attr)))
        for dimension in DIMENSIONS:
            for name, part in rec.by[dimension].items():
                mine = out.by[dimension].get(name)
                if mine is None:
                    out.by[dimension][name] = Breakdown(part.requests, part.errors, part.latency)
                else:
                    mine.requests += part.requests
                    mine.errors += part.errors
                    mine.latency = _add(mine.latency, part.latency)
        if rec.slowest is not None and (out.slowest is None or rec.slowest.ms > out.slowest.ms):
            out.slowest = rec.slowest
        first = False
    results = [rec.ledger for rec in recorders if rec.ledger is not None]
    out.ledger = ledger.merge_results(results) if results else None
    outages = [rec.outages for rec in recorders if rec.outages is not None]
    out.outages = ledger.merge_outages([o for pod in outages for o in pod]) if outages else None
    # A name that some pod never saw still merges exactly; one whose histogram some pod left
    # out (`approx`) has latency None and reports counts only.
    return out

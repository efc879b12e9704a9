"""A drill's report as sections (text, a table, a figure and its sources), built from the Drill
object, its SLOs' specs, the Lab's Prometheus over the drill's window and the slowest request's
log lines. `document.py` writes the sections as HTML and Markdown."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone

from pimlab.report import figures
from pimlab.report.figures import Bar, Event, Marker
from pimlab.report.series import (QUANTILES, RangeReader, Series, gateway_selector, latency_query,
                                  per_shard_errors_query, per_shard_query, server_errors_query, slo_queries, throughput_query)
from pimlab.report.view import DrillView, Slowest
from pimlab_operator.schema import duration_seconds
from pimlab_operator.slo.model import SLOSpec

BUDGET_FORMULA = (
    "burned = mean burn rate over the drill × drill length ÷ SLO window, where mean burn rate = "
    "(bad events ÷ total events over the drill) ÷ (1 − objective). It is the share of the SLO window's "
    "error budget the drill spent at its own traffic rate (0.02 = 2 %), from the drill's own time range "
    "(status.window), whatever the lab's age.")
LIFETIME_CAVEAT = (
    "Lifetime remaining is the SLO's own status figure: it covers whatever history Prometheus holds, so "
    "on a lab a few minutes old it is the drill's own error ratio stretched over the whole SLO window "
    "(it can read far below zero). It is shown beside the drill's figure, never judged.")


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]


@dataclass
class Section:
    """One part of the report. A figure section has `image` (its PNG's file name) and either
    `png` or `missing` (why it could not be drawn); every figure names its `sources`."""

    title: str
    text: list[str] = field(default_factory=list)
    table: Table | None = None
    image: str | None = None
    png: bytes | None = None
    missing: str | None = None
    code: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)


@dataclass
class Report:
    title: str  # "Drill <namespace>/<name>"
    verdict: str  # the verdict, else the phase, else "not started"
    sections: list[Section]


@dataclass
class TraceLogs:
    """The services' log lines that carry the slowest request's trace id ("pod: line"), or why
    there are none."""

    lines: list[str] = field(default_factory=list)
    missing: str | None = None
    source: str = ""


def show(value, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 10 ** digits else f"{value:.{digits}g}"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%SZ")
    return str(value)


def _seconds(at: datetime | None, origin: datetime) -> float | None:
    return None if at is None else (at - origin).total_seconds()


def markers(view: DrillView, origin: datetime) -> list[Marker]:
    """Every injection (fired, until it ended) and every failover (at, for its duration)."""
    found = []
    for injection in view.status.injections:
        if injection.fired_at:
            found.append(Marker(_seconds(injection.fired_at, origin), f"{injection.name} ({injection.action or 'inject'})",
                                "injection", _seconds(injection.ended_at, origin)))
    for failover in view.status.failovers:
        if failover.at:
            at = _seconds(failover.at, origin)
            found.append(Marker(at, f"failover {failover.shard}", "failover",
                                at + failover.duration_seconds if failover.duration_seconds else None))
    return found


MARKER_SOURCE = ("Markers: Drill status.injections[].firedAt/endedAt (dashed, red) and status.failovers[].at/"
                 "durationSeconds (dash-dot, purple).")


def verdict_sections(view: DrillView) -> list[Section]:
    status = view.status
    ledger, recovery = status.ledger, status.recovery
    summary = Section("Verdict", table=Table(
        ["Phase", "Verdict", "Score", "RTO s", "Lost writes", "Window start", "Window end"],
        [[show(status.phase), show(status.verdict), show(status.score), show(recovery.seconds if recovery else None),
          show(ledger.lost if ledger else None), show(status.window.start), show(status.window.end)]]),
        text=[t for t in (status.reason and f"Reason: {status.reason}", status.message) if t],
        sources=[f"Drill {view.namespace}/{view.name}: status.phase, status.verdict, status.score, "
                 "status.recovery.seconds, status.ledger.lost, status.window, status.reason, status.message."])
    hypotheses = Section("Hypotheses", table=Table(
        ["Hypothesis", "Observed", "Limit", "Met", "Source"],
        [[h.name, show(h.observed), show(h.limit), show(h.met), show(h.source)] for h in status.hypotheses]),
        text=[] if status.hypotheses else ["The drill judged no hypothesis (it did not reach Judging)."],
        sources=["Drill status.hypotheses[] {name, observed, limit, met, source}."])
    budgets = Section("Error budgets", table=Table(
        ["SLO", "Objective", "Bad events", "Total events", "Mean burn rate", "Burned", "Limit",
         "Lifetime remaining (caveat)"],
        [[b.slo, show(b.objective, 6), show(b.bad_events, 6), show(b.total_events, 6), show(b.mean_burn_rate),
          _percent(b.burned), _percent(b.limit), _percent(b.lifetime_remaining)] for b in status.budgets]),
        text=[BUDGET_FORMULA, LIFETIME_CAVEAT],
        sources=["Drill status.budgets[] {slo, objective, badEvents, totalEvents, meanBurnRate, burned, limit, "
                 "lifetimeRemaining}."])
    latency = Section("Latency per journey (ms)", table=Table(
        ["Journey", "p50", "p95", "p99"],
        [[j.journey, show(j.p50), show(j.p95), show(j.p99)] for j in status.latency]),
        sources=["Drill status.latency[] (the PersonaLoad's status.summary, as its clients measured)."])
    return [summary, hypotheses, budgets, latency]


def _percent(fraction: float | None) -> str:
    """A budget fraction and its percentage: 0.0023 (0.23 %), -27.6 (-2,760 %)."""
    if fraction is None:
        return "–"
    percent = fraction * 100
    return f"{fraction:.4g} ({percent:,.0f} %)" if abs(percent) >= 100 else f"{fraction:.4g} ({percent:.3g} %)"


def latency_section(view: DrillView, reader: RangeReader, marks: list[Marker], length: float) -> Section:
    selector = gateway_selector(view.lab, view.namespace)
    quantiles = [(q, latency_query(q, selector)) for q in QUANTILES]
    volume = [("all", throughput_query(selector)), ("5xx", server_errors_query(selector))]
    section = Section("Latency and throughput at the gateway", image="latency-throughput.png",
                      sources=[f"p{int(q * 100)} (s, shown in ms): `{expr}`" for q, expr in quantiles]
                      + [f"requests/s ({label}): `{expr}`" for label, expr in volume] + [MARKER_SOURCE])
    lines = []
    for q, expr in quantiles:
        for series in reader.series(expr, label=f"p{int(q * 100)}"):
            lines.append(Series(series.label, [(t, v * 1000) for t, v in series.points]))
    rates = [s for label, expr in volume for s in reader.series(expr, label=label)]
    if reader.missing():
        section.missing = reader.missing()
    elif not lines and not rates:
        section.missing = "Prometheus holds no gateway request series in the drill's window."
    else:
        section.png = figures.latency_throughput(lines, rates, marks, length)
    return section


def burned_so_far(bad: Series, total: Series, objective: float, window_seconds: float, step: float) -> Series:
    """The contract's formula applied to [start, t] at each step: Σbad·step ÷ ((1 − objective) ×
    (Σtotal·step ÷ t) × window), as a percentage of the window's budget."""
    bad_at = dict(bad.points)
    points, bad_sum, total_sum = [], 0.0, 0.0
    for t, rate in total.points:
        bad_sum += bad_at.get(t, 0.0) * step
        total_sum += rate * step
        if t > 0 and total_sum > 0:
            points.append((t, 100 * bad_sum / ((1 - objective / 100) * (total_sum / t) * window_seconds)))
    return Series(total.label, points)


def budget_section(view: DrillView, slos: dict[str, SLOSpec], reader: RangeReader, marks: list[Marker],
                   length: float) -> Section:
    section = Section("Error-budget burn per SLO", image="budget-burn.png", text=[BUDGET_FORMULA])
    burns, limits, unknown = [], {}, []
    for budget in view.status.budgets:
        spec = slos.get(budget.slo)
        queries = slo_queries(spec) if spec else None
        if queries is None:
            unknown.append(budget.slo)
            continue
        bad_expr, total_expr = queries
        section.sources.append(f"SLO {view.namespace}/{budget.slo} (objective {spec.objective:g} %, window "
                               f"{spec.window}): bad events/s `{bad_expr}`; total events/s `{total_expr}`.")
        bad = reader.series(bad_expr, label=budget.slo)
        total = reader.series(total_expr, label=budget.slo)
        if bad and total:
            burn = burned_so_far(bad[0], total[0], spec.objective, duration_seconds(spec.window), reader.step)
            burns.append(burn)
            if budget.limit is not None:
                limits[budget.slo] = budget.limit * 100
            if burn.points:
                section.text.append(f"{budget.slo}: the plotted burn ends at {burn.points[-1][1]:.3g} % of the "
                                    f"window's budget; the drill judged {_percent(budget.burned)}.")
    section.sources.append("SLOs and limits: Drill status.budgets[].slo/limit. " + MARKER_SOURCE)
    if unknown:
        section.text.append("Not plotted (no SLO object with event counts to query): " + ", ".join(unknown) + ".")
    if reader.missing():
        section.missing = reader.missing()
    elif not view.status.budgets:
        section.missing = "The drill reports no budget (status.budgets is empty)."
    elif not burns:
        section.missing = "Prometheus holds no SLI series of these SLOs in the drill's window."
    else:
        section.png = figures.budget_burn(burns, limits, marks, length)
    return section


def shard_section(view: DrillView, reader: RangeReader, marks: list[Marker], length: float) -> Section:
    selector = gateway_selector(view.lab, view.namespace)
    every, failing = per_shard_query(selector), per_shard_errors_query(selector)
    section = Section("Requests per shard", image="requests-per-shard.png",
                      sources=[f"requests/s per shard (solid): `{every}`",
                               f"5xx/s per shard (dashed): `{failing}`", MARKER_SOURCE])
    requests = reader.series(every, label_key="shard")
    errors = reader.series(failing, label_key="shard")
    if reader.missing():
        section.missing = reader.missing()
    elif not requests:
        section.missing = "Prometheus holds no gateway request series in the drill's window."
    else:
        section.png = figures.per_shard(requests, errors, marks, length)
    return section


def timeline_section(view: DrillView, origin: datetime, length: float) -> Section:
    status = view.status
    bars, events = [], []
    for injection in status.injections:
        if injection.fired_at:
            start = _seconds(injection.fired_at, origin)
            end = _seconds(injection.ended_at, origin) if injection.ended_at else start
            bars.append(Bar(f"inject {injection.name}", start, end - start,
                            f"{injection.action or ''} {', '.join(injection.targets)}".strip(), figures.INJECTION_COLOUR))
    for failover in status.failovers:
        if failover.at:
            bars.append(Bar(f"{failover.shard} failover", _seconds(failover.at, origin), failover.duration_seconds or 0,
                            f"{failover.from_} → {failover.to} ({failover.reason or '?'}, "
                            f"{show(failover.duration_seconds)} s)", figures.FAILOVER_COLOUR))
    for shard in (status.recovery.shards if status.recovery else []):
        if shard.start:
            start = _seconds(shard.start, origin)
            seconds = shard.outage_seconds if shard.outage_seconds is not None else \
                (_seconds(shard.end, origin) - start if shard.end else length - start)
            bars.append(Bar(f"{shard.shard} writes failing", start, seconds,
                            f"{show(seconds)} s" + ("" if shard.end else " (no write acknowledged after)"), "#e67e22"))
    for entry in status.timeline:
        events.append(Event(entry.source or "?", _seconds(entry.time, origin), entry.event))
    section = Section("Failover timeline", image="failover-timeline.png", sources=[
        "Drill status.injections[] (firedAt, endedAt, action, targets), status.failovers[] (shard, from, to, reason, "
        "at, durationSeconds), status.recovery.shards[] (start, end, outageSeconds: the write outage the clients "
        "measured) and status.timeline[] (time, source, event)."])
    if bars or events:
        section.png = figures.timeline(bars, events, length)
    else:
        section.missing = "The drill's status holds no injection, failover, outage or timeline entry."
    section.table = Table(["Time", "Source", "Event", "Detail"],
                          [[show(e.time), e.source, e.event, e.detail] for e in status.timeline])
    return section


def ledger_section(view: DrillView) -> Section:
    ledger = view.status.ledger
    section = Section("Write ledger", image="ledger.png",
                      sources=["Drill status.ledger {acknowledged, verified, lost, lostSample} (copied from the "
                               f"PersonaLoad {view.status.load.name or '?'}'s status.ledger)."])
    if ledger is None or ledger.acknowledged is None:
        section.missing = "The drill reports no ledger (status.ledger is unset: the load did not finish its read-back)."
        return section
    verified, lost = ledger.verified or 0, ledger.lost or 0
    section.png = figures.ledger(ledger.acknowledged, verified, lost)
    section.text.append(f"{ledger.acknowledged:,} writes acknowledged, {verified:,} read back, {lost:,} lost.")
    if ledger.lost_sample:
        section.text.append("Lost (sample of tracking ids):")
        section.code = list(ledger.lost_sample)
    return section


def slowest_section(view: DrillView, slowest: Slowest | None, logs: TraceLogs) -> Section:
    load = view.status.load.name or "?"
    section = Section("Slowest request", image="slowest-request.png", sources=[
        f"PersonaLoad {view.namespace}/{load} status.slowest {{traceId, journey, step, ms, at}}; its journey's "
        "p50/p95/p99: Drill status.latency[]."])
    if slowest is None or not slowest.trace_id:
        section.missing = "The PersonaLoad reports no slowest request (status.slowest is unset)."
        return section
    journey = next((j for j in view.status.latency if j.journey == slowest.journey), None)
    section.png = figures.slowest(slowest.trace_id, f"{slowest.journey or '?'} / {slowest.step or '?'}",
                                  slowest.ms or 0.0, {f"p{q}": getattr(journey, f"p{q}") for q in (50, 95, 99)
                                                      if journey and getattr(journey, f"p{q}") is not None})
    section.table = Table(["Trace id", "Journey", "Step", "ms", "At"],
                          [[slowest.trace_id, show(slowest.journey), show(slowest.step), show(slowest.ms),
                            show(slowest.at)]])
    if logs.source:
        section.sources.append(logs.source)
    if logs.missing:
        section.text.append(f"No log lines: {logs.missing}")
    elif not logs.lines:
        section.text.append("No service log line in the drill's window carries this trace id.")
    else:
        section.text.append(f"{len(logs.lines)} log line(s) from the services carry trace_id {slowest.trace_id}:")
        section.code = logs.lines
    return section


def build(drill: dict, slos: dict[str, SLOSpec], prometheus_url: str | None, slowest: Slowest | None = None,
          logs: TraceLogs | None = None, timeout: float = 10.0) -> Report:
    """The report of `drill` (the object as a dict); Prometheus at `prometheus_url` is queried
    over status.window (where it is unset or unreadable, each figure that needed it says why)."""
    view = DrillView.of(drill)
    status = view.status
    start = status.window.start or status.started_at
    end = status.window.end or status.finished_at or start
    sections = verdict_sections(view)
    if start is None:
        start = end = datetime.now(timezone.utc)
        reader = RangeReader(prometheus_url, start, end, timeout,
                             failure="the drill has no window (status.window is unset): it never started")
    else:
        reader = RangeReader(prometheus_url, start, end, timeout)
    length = max((end - start).total_seconds(), 1.0)
    marks = markers(view, start)
    sections += [latency_section(view, reader, marks, length), budget_section(view, slos, reader, marks, length),
                 shard_section(view, reader, marks, length), timeline_section(view, start, length),
                 ledger_section(view), slowest_section(view, slowest, logs or TraceLogs())]
    return Report(f"Drill {view.namespace}/{view.name}", status.verdict or status.phase or "not started", sections)

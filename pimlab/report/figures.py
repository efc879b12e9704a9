"""The report's plots as PNG bytes (matplotlib's Agg canvas: no display, no pyplot state).
x is seconds since the drill window's start, so the injections' offsets read off the axis."""

from __future__ import annotations

import io
from dataclasses import dataclass

from pimlab.report.series import Series

DPI = 110
WIDTH = 10.0
INJECTION_COLOUR = "#c0392b"
FAILOVER_COLOUR = "#8e44ad"
QUANTILE_COLOURS = ("#4c72b0", "#dd8452", "#c44e52")


@dataclass
class Marker:
    """An injection or a failover on the time axis: a labelled vertical line, and a shaded span
    while it lasted where its end is known."""

    at: float
    label: str
    kind: str  # "injection" | "failover"
    until: float | None = None

    @property
    def colour(self) -> str:
        return INJECTION_COLOUR if self.kind == "injection" else FAILOVER_COLOUR


def _figure(rows: int = 1, height: float = 4.2, sharex: bool = True):
    # matplotlib is heavy (numpy, fonts) and an optional extra: loaded only when a report is drawn
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as missing:
        raise RuntimeError("the drill report draws with matplotlib, the project's `report` extra: "
                           "pip install -e '.[report]' (make venv installs it)") from missing

    fig = Figure(figsize=(WIDTH, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, 1, sharex=sharex, squeeze=False)[:, 0]
    for ax in axes:
        ax.grid(True, color="#dddddd", linewidth=0.6)
        ax.set_axisbelow(True)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
    return fig, list(axes)


def _png(fig) -> bytes:
    out = io.BytesIO()
    fig.savefig(out, format="png", dpi=DPI)
    return out.getvalue()


def _staggered(positions: list[float], length: float, levels: int = 3) -> list[int]:
    """A text level per position (in order): 0 unless the previous position is closer than 12 %
    of the axis, then the next level, so labels of close markers do not overwrite each other."""
    found, previous = [], None
    for at in positions:
        level = 0 if previous is None or at - previous[0] > 0.12 * length else (previous[1] + 1) % levels
        found.append(level)
        previous = (at, level)
    return found


def _mark(axes, markers: list[Marker], length: float) -> None:
    """Every marker on every axis; its label once, above the top axis."""
    for ax in axes:
        for marker in markers:
            ax.axvline(marker.at, color=marker.colour, linestyle="--" if marker.kind == "injection" else "-.",
                       linewidth=1.2, alpha=0.9)
            if marker.until is not None and marker.until > marker.at:
                ax.axvspan(marker.at, marker.until, color=marker.colour, alpha=0.08)
    ordered = sorted(markers, key=lambda m: m.at)
    for marker, level in zip(ordered, _staggered([m.at for m in ordered], length)):
        axes[0].annotate(marker.label, xy=(marker.at, 1.0), xycoords=("data", "axes fraction"),
                         xytext=(2, 3 + 11 * level), textcoords="offset points", va="bottom", ha="left",
                         fontsize=8, color=marker.colour)
    for ax in axes:
        ax.set_xlim(0, max(length, 1.0))


def _plot(ax, series: Series, **style) -> None:
    xs = [t for t, _ in series.points]
    ys = [v for _, v in series.points]
    ax.plot(xs, ys, label=series.label, linewidth=1.6, **style)


def latency_throughput(latency: list[Series], throughput: list[Series], markers: list[Marker], length: float) -> bytes:
    """p50/p95/p99 (ms) above, requests/s (all and 5xx) below, the injections and failovers on both."""
    fig, (top, bottom) = _figure(2, height=6.0)
    for series, colour in zip(latency, QUANTILE_COLOURS):
        _plot(top, series, color=colour)
    top.set_ylabel("latency (ms)")
    top.set_ylim(bottom=0)
    top.legend(loc="upper right", fontsize=8, frameon=False)
    for series, colour in zip(throughput, ("#2e7d32", INJECTION_COLOUR)):
        _plot(bottom, series, color=colour)
    bottom.set_ylabel("requests/s")
    bottom.set_ylim(bottom=0)
    bottom.legend(loc="upper right", fontsize=8, frameon=False)
    bottom.set_xlabel("seconds since the drill's start")
    _mark([top, bottom], markers, length)
    return _png(fig)


def budget_burn(burns: list[Series], limits: dict[str, float], markers: list[Marker], length: float) -> bytes:
    """Per SLO: the share of its window's error budget the drill has burned so far (%), with the
    hypothesis' limit as a dotted line of the same colour."""
    fig, (ax,) = _figure(1)
    colours = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c")
    for i, series in enumerate(burns):
        colour = colours[i % len(colours)]
        _plot(ax, series, color=colour)
        if series.label in limits:
            ax.axhline(limits[series.label], color=colour, linestyle=":", linewidth=1.2)
            ax.annotate(f"limit {limits[series.label]:g} %", xy=(length, limits[series.label]), xytext=(-4, 3),
                        textcoords="offset points", ha="right", fontsize=8, color=colour)
    ax.set_ylabel("error budget burned (% of the SLO window's)")
    ax.set_ylim(bottom=0)
    ax.set_xlabel("seconds since the drill's start")
    ax.legend(loc="upper left", fontsize=8, frameon=False)
    _mark([ax], markers, length)
    return _png(fig)


def per_shard(requests: list[Series], errors: list[Series], markers: list[Marker], length: float) -> bytes:
    """Requests/s per shard at the gateway (solid) and their 5xx (dashed, same colour): where the
    load went and which shard failed it."""
    fig, (ax,) = _figure(1)
    failing = {s.label: s for s in errors}
    for i, one in enumerate(sorted(requests, key=lambda s: s.label)):
        colour = f"C{i}"
        _plot(ax, one, color=colour)
        if one.label in failing and any(v > 0 for _, v in failing[one.label].points):
            _plot(ax, Series(f"{one.label} 5xx", failing[one.label].points), color=colour, linestyle="--")
    ax.set_ylabel("requests/s")
    ax.set_ylim(0, max([v for one in requests for _, v in one.points] + [1.0]) * 1.15)
    ax.set_xlabel("seconds since the drill's start")
    ax.legend(loc="lower right", fontsize=8, frameon=False, ncols=4)
    _mark([ax], markers, length)
    return _png(fig)


@dataclass
class Bar:
    """One span on the timeline: a row, from `start` for `seconds`, and a label inside or beside it."""

    row: str
    start: float
    seconds: float
    label: str
    colour: str


@dataclass
class Event:
    row: str
    at: float
    label: str


def timeline(bars: list[Bar], events: list[Event], length: float) -> bytes:
    """The failover's timeline: injections, failovers and the clients' write outages as spans,
    the drill's timeline entries as dots on their source's row."""
    rows = list(dict.fromkeys([b.row for b in bars] + [e.row for e in events]))
    fig, (ax,) = _figure(1, height=max(2.4, 0.55 * len(rows) + 1.2))
    index = {row: len(rows) - 1 - i for i, row in enumerate(rows)}
    for bar in bars:
        width = max(bar.seconds, length / 300)
        ax.barh(index[bar.row], width, left=bar.start, height=0.5, color=bar.colour, alpha=0.75)
        ax.annotate(bar.label, xy=(bar.start + width, index[bar.row]), xytext=(4, 0), textcoords="offset points",
                    va="center", fontsize=8)
    for row in dict.fromkeys(e.row for e in events):
        mine = sorted((e for e in events if e.row == row), key=lambda e: e.at)
        for event, level in zip(mine, _staggered([e.at for e in mine], length, levels=2)):
            ax.plot([event.at], [index[row]], marker="o", markersize=5, color="#34495e")
            ax.annotate(event.label, xy=(event.at, index[row]), xytext=(0, 6 if level == 0 else -7),
                        textcoords="offset points", ha="center", va="bottom" if level == 0 else "top",
                        fontsize=7, color="#34495e")
    ax.set_yticks(list(index.values()), list(index.keys()), fontsize=8)
    ax.set_ylim(-0.7, len(rows) - 0.2)
    ax.set_xlim(0, max(length, 1.0))
    ax.set_xlabel("seconds since the drill's start")
    return _png(fig)


def ledger(acknowledged: int, verified: int, lost: int) -> bytes:
    """The write ledger: acknowledged writes, those read back, those lost (and the remainder the
    read-back could not decide)."""
    undecided = max(acknowledged - verified - lost, 0)
    names = ["acknowledged", "verified", "lost", "not verifiable"]
    counts = [acknowledged, verified, lost, undecided]
    colours = ["#4c72b0", "#2e7d32", INJECTION_COLOUR, "#8c8c8c"]
    fig, (ax,) = _figure(1, height=2.8)
    positions = list(range(len(names)))[::-1]
    # a lost write is the point of the ledger: its bar stays visible beside thousands acknowledged
    widths = [max(c, max(counts) / 150) if name == "lost" and c else c for name, c in zip(names, counts)]
    ax.barh(positions, widths, color=colours, height=0.6)
    for y, name, count, width in zip(positions, names, counts, widths):
        alarm = name == "lost" and count > 0
        ax.annotate(f"{count:,}" + (" LOST" if alarm else ""), xy=(width, y), xytext=(4, 0), textcoords="offset points",
                    va="center", fontsize=9, color=INJECTION_COLOUR if alarm else "#222222",
                    fontweight="bold" if alarm else "normal")
    ax.set_title(f"{lost:,} acknowledged write(s) lost" if lost else "no acknowledged write lost", loc="left",
                 fontsize=10, color=INJECTION_COLOUR if lost else "#2e7d32")
    ax.set_yticks(positions, names, fontsize=9)
    ax.set_xlim(0, max(counts + [1]) * 1.15)
    ax.set_xlabel("writes")
    return _png(fig)


def slowest(trace_id: str, what: str, ms: float, quantiles: dict[str, float]) -> bytes:
    """The slowest request beside its journey's p50/p95/p99 (ms): how far out in the tail it is."""
    names = [*quantiles, "slowest"]
    values = [*quantiles.values(), ms]
    fig, (ax,) = _figure(1, height=2.4)
    positions = list(range(len(names)))[::-1]
    ax.barh(positions, values, color=[*QUANTILE_COLOURS[:len(quantiles)], "#34495e"], height=0.6)
    for y, value in zip(positions, values):
        ax.annotate(f"{value:,.1f} ms", xy=(value, y), xytext=(4, 0), textcoords="offset points", va="center",
                    fontsize=9)
    ax.set_yticks(positions, names, fontsize=9)
    ax.set_xlim(0, max(values + [1.0]) * 1.2)
    ax.set_xlabel("ms")
    ax.set_title(f"{what}: trace {trace_id}", loc="left", fontsize=10)
    return _png(fig)

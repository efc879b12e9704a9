"""`pimlab report drill`: a report rendered from a Drill object (written here per the Drill
contract) and a real Prometheus (Debian's) holding a drill's worth of the services' series,
backfilled with `promtool tsdb create-blocks-from openmetrics`; and the same report when
Prometheus cannot be reached."""

from __future__ import annotations

import io
import json
import logging
import re
import shutil
import struct
import subprocess
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml
from opentelemetry import trace
from prometheus_client import generate_latest

from api_services import telemetry
from pimlab.report import cluster, document
from pimlab.report.drill import TraceLogs, build
from pimlab_operator.slo.model import SLOSpec
from tests.live_prometheus import free_port, promql_metric_names, start_prometheus

ROOT = Path(__file__).resolve().parent.parent
SLOS = {d["metadata"]["name"]: SLOSpec.model_validate(d["spec"])
        for d in yaml.safe_load_all((ROOT / "samples" / "30-slos.yaml").read_text()) if d}
BOOKING_SLOS = ("encounter-booking-availability", "encounter-booking-latency")

#: The drill: 300 s from START, shard-00's primary killed at +120 s, the clients' writes to
#: shard-00 failing for 12 s, the failover done at +131 s.
START = (datetime.now(timezone.utc) - timedelta(minutes=40)).replace(second=0, microsecond=0)
LENGTH = 300
KILL, OUTAGE = 120, 12
SCRAPE = 15
SLOW_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


def at(offset: float) -> str:
    return (START + timedelta(seconds=offset)).strftime("%Y-%m-%dT%H:%M:%SZ")


def drill_object() -> dict:
    """A finished Drill as the operator writes it (the Drill contract's status)."""
    return {
        "apiVersion": "pim-sre.lab/v1alpha1", "kind": "Drill",
        "metadata": {"name": "primary-loss-under-load", "namespace": "lab"},
        "spec": {"labRef": "pim"},
        "status": {
            "phase": "Failed", "startedAt": at(-5), "finishedAt": at(LENGTH + 20), "deadline": at(900),
            "window": {"start": at(0), "end": at(LENGTH)},
            "load": {"name": "primary-loss-under-load"},
            "injections": [{"name": "kill-shard-00-primary", "experiment": "primary-loss-under-load-kill-shard-00-primary",
                            "offsetSeconds": KILL, "firedAt": at(KILL), "endedAt": at(KILL + 2), "action": "podKill",
                            "targets": ["shard-00-0"]}],
            "timeline": [
                {"time": at(0), "source": "Drill", "event": "Baseline", "detail": "load started"},
                {"time": at(KILL), "source": "ChaosExperiment/kill-shard-00-primary", "event": "Injected",
                 "detail": "pod shard-00-0 deleted"},
                {"time": at(KILL + 3), "source": "Shard/shard-00", "event": "FailoverStarted", "detail": "primary lost"},
                {"time": at(KILL + OUTAGE - 1), "source": "Shard/shard-00", "event": "FailoverCompleted",
                 "detail": "shard-00-1 promoted"},
                {"time": at(LENGTH), "source": "Drill", "event": "Judging", "detail": ""},
            ],
            "failovers": [{"shard": "shard-00", "from": "shard-00-0", "to": "shard-00-1", "reason": "PrimaryLost",
                           "durationSeconds": 8.0, "at": at(KILL + 3)}],
            "ledger": {"acknowledged": 2841, "verified": 2840, "lost": 1, "lostSample": ["trk-00-000917"]},
            "recovery": {"seconds": float(OUTAGE), "shards": [
                {"shard": "shard-00", "outageSeconds": float(OUTAGE), "start": at(KILL), "end": at(KILL + OUTAGE)}]},
            "budgets": [
                {"slo": "encounter-booking-availability", "objective": 99.9, "badEvents": 120, "totalEvents": 6000,
                 "meanBurnRate": 20.0, "burned": 0.0023, "limit": 0.02, "lifetimeRemaining": -27.6},
                {"slo": "encounter-booking-latency", "objective": 99.0, "badEvents": 150, "totalEvents": 6000,
                 "meanBurnRate": 2.5, "burned": 0.00029, "limit": 0.02, "lifetimeRemaining": 0.4},
            ],
            "latency": [{"journey": "bookEncounter", "p50": 38.0, "p95": 240.0, "p99": 1900.0}],
            "hypotheses": [
                {"name": "slo encounter-booking-availability", "observed": 0.0023, "limit": 0.02, "met": True,
                 "source": "status.budgets[encounter-booking-availability].burned"},
                {"name": "maxRecoverySeconds", "observed": 12.0, "limit": 15.0, "met": True,
                 "source": "status.recovery.seconds"},
                {"name": "maxLostWrites", "observed": 1, "limit": 0, "met": False, "source": "status.ledger.lost"},
            ],
            "verdict": "Failed", "score": 62, "reason": "WritesLost", "message": "1 acknowledged write was lost (limit 0)",
        },
    }


# ---- the series: what the gateway exports during the drill, one sample per scrape ---------------

BUCKETS = telemetry.LATENCY_BUCKETS
#: bookings/s per shard (60/s in all)
SHARDS = {"shard-00": 20, "shard-01": 16, "shard-02": 24}


def _labels(**labels: str) -> str:
    return "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}"


def openmetrics() -> str:
    """Counters and a histogram per shard and status, SHARDS' bookings/s, shard-00's failing
    with 503 (and slow) during the outage; from 2 min before the window to 2 min after."""
    requests: dict[tuple, list[tuple[float, float]]] = {}
    histogram: dict[tuple, list[tuple[float, float]]] = {}
    count = {}
    buckets = {}
    for offset in range(-120, LENGTH + 120 + 1, SCRAPE):
        stamp = START.timestamp() + offset
        for shard, rate in SHARDS.items():
            failing = shard == "shard-00" and KILL <= offset < KILL + OUTAGE + SCRAPE
            for status, per_second, seconds in (("201", 0 if failing else rate, 0.04),
                                                ("503", rate if failing else 0, 2.0)):
                key = (shard, status)
                count[key] = count.get(key, 0) + per_second * SCRAPE
                requests.setdefault(key, []).append((stamp, count[key]))
                for le in (*BUCKETS, "+Inf"):
                    hit = le == "+Inf" or seconds <= le
                    buckets[(key, le)] = buckets.get((key, le), 0) + (per_second * SCRAPE if hit else 0)
                    histogram.setdefault((key, le), []).append((stamp, buckets[(key, le)]))
    common = {"service": "gateway", "route": "/encounters", "method": "POST", "persona": "patient"}
    out = ["# TYPE pim_http_requests counter"]
    for (shard, status), samples in requests.items():
        out += [f"pim_http_requests_total{_labels(**common, shard=shard, status=status)} {v} {t}" for t, v in samples]
    out.append("# TYPE pim_http_request_duration_seconds histogram")
    for ((shard, status), le), samples in histogram.items():
        bound = le if le == "+Inf" else repr(float(le))
        out += [f"pim_http_request_duration_seconds_bucket{_labels(**common, shard=shard, status=status, le=bound)} {v} {t}"
                for t, v in samples]
    for (shard, status), samples in requests.items():
        labels = _labels(**common, shard=shard, status=status)
        out += [f"pim_http_request_duration_seconds_count{labels} {v} {t}" for t, v in samples]
        out += [f"pim_http_request_duration_seconds_sum{labels} {v * 0.05} {t}" for t, v in samples]
    return "\n".join(out) + "\n# EOF\n"


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory):
    promtool = shutil.which("promtool")
    if promtool is None or shutil.which("prometheus") is None:
        pytest.skip("prometheus/promtool are not installed (make deps installs Debian's prometheus)")
    workdir = tmp_path_factory.mktemp("drill-prometheus")
    (workdir / "series.om").write_text(openmetrics())
    subprocess.run([promtool, "tsdb", "create-blocks-from", "openmetrics", str(workdir / "series.om"),
                    str(workdir / "data")], check=True, capture_output=True, timeout=120)
    prom = start_prometheus(workdir, {}, [])
    yield prom
    prom.stop()


def slowest_logs() -> TraceLogs:
    """The services' own log lines (telemetry.JsonFormatter) for two requests, one of them the
    slowest, filtered to the slowest's trace id as the report filters each pod's log."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(telemetry.JsonFormatter())
    log = logging.getLogger("drill-report-test")
    log.addHandler(handler)
    log.propagate, level = False, log.level
    log.setLevel(logging.INFO)
    try:
        for trace_id in (SLOW_TRACE, "0af7651916cd43dd8448eb211c80319c"):
            context = trace.SpanContext(int(trace_id, 16), 0x00F067AA0BA902B7, is_remote=False)
            with trace.use_span(trace.NonRecordingSpan(context)):
                log.info("request", extra={"method": "POST", "route": "/encounters", "status": 201,
                                           "duration_ms": 1893.2, "service": "encounter"})
    finally:
        log.removeHandler(handler)
        log.setLevel(level)
    lines = cluster.carrying(out.getvalue(), SLOW_TRACE)
    assert len(lines) == 1 and json.loads(lines[0])["trace_id"] == SLOW_TRACE
    return TraceLogs([f"pim-encounter-7d9f-x2: {line}" for line in lines], source="test log")


def slowest():
    from pimlab.report.view import Slowest

    return Slowest.model_validate({"traceId": SLOW_TRACE, "journey": "bookEncounter", "step": "book",
                                   "ms": 1893.2, "at": at(KILL + 4)})


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path.name} is not a PNG"
    return struct.unpack(">II", data[16:24])


def check_self_contained(page: str) -> None:
    """No reference leaves the file: every src is a data URI, no href, stylesheet or script."""
    assert not re.search(r"<(link|script|iframe|object|embed)\b", page, re.I)
    assert not re.search(r"\bhref\s*=", page, re.I)
    assert not re.search(r"url\(", page, re.I)
    for src in re.findall(r'\bsrc\s*=\s*"([^"]*)"', page, re.I):
        assert src.startswith("data:image/png;base64,"), src[:80]


FIGURES = ("latency-throughput.png", "budget-burn.png", "requests-per-shard.png", "failover-timeline.png",
           "ledger.png", "slowest-request.png")


def test_report_from_drill_and_prometheus(prometheus, tmp_path):
    slos = {name: SLOS[name] for name in BOOKING_SLOS}
    report = build(drill_object(), slos, prometheus.url, slowest(), slowest_logs())
    written = document.write(report, tmp_path)
    assert {p.name for p in written} == {*FIGURES, "report.md", "report.html"}
    missing = {s.title: s.missing for s in report.sections if s.missing}
    assert not missing, missing

    for name in FIGURES:
        width, height = png_size(tmp_path / name)
        assert width >= 900 and height >= 200, (name, width, height)
        assert (tmp_path / name).stat().st_size > 10_000, name  # drawn lines and text, not an empty canvas

    figures = [s for s in report.sections if s.image]
    assert len(figures) == len(FIGURES)
    for section in figures:
        assert section.sources, f"{section.title} names no source"
    markdown = (tmp_path / "report.md").read_text()
    page = (tmp_path / "report.html").read_text()
    for section in figures:
        assert f"![{section.title}]({section.image})" in markdown
        block = markdown.split(f"## {section.title}\n", 1)[1].split("\n## ", 1)[0]
        assert "*Source:*" in block, section.title
    check_self_contained(page)
    assert page.count('src="data:image/png;base64,') == len(FIGURES)

    # the PromQL under the figures is what the services export and the SLO samples say
    exported = set()
    telemetry.observe_request("gateway", "/encounters", "POST", "patient", "shard-00", 201, 0.01, "")
    for line in generate_latest(telemetry.REGISTRY).decode().splitlines():
        if line and not line.startswith("#"):
            exported.add(line.split("{")[0].split(" ")[0])
    queries = [q for s in figures for source in s.sources for q in re.findall(r"`([^`]+)`", source)]
    assert any("histogram_quantile(0.99" in q for q in queries)
    assert any(SLOS["encounter-booking-availability"].sli.ratio.total.split("[")[0] in q for q in queries)
    for query in queries:
        assert promql_metric_names(query) <= exported, query

    # what the report says: the verdict header, the hypotheses, budgets with formula and caveat
    assert markdown.startswith("# Drill lab/primary-loss-under-load: Failed")
    assert "| maxLostWrites | 1 | 0 | no | status.ledger.lost |" in markdown
    assert "burned = mean burn rate over the drill × drill length ÷ SLO window" in markdown
    assert "whatever history Prometheus holds" in markdown
    assert "| encounter-booking-availability | 99.9 | 120 | 6000 | 20 | 0.0023 (0.23 %) | 0.02 (2 %) |" in markdown
    assert "trk-00-000917" in markdown and SLOW_TRACE in markdown and "pim-encounter-7d9f-x2" in markdown

    # the burn the figure plots ends near the contract's formula over the whole window: shard-00
    # failed for two scrape intervals (30 s at 20/s) of 300 s at 60/s; objective 99.9 %, window 30d
    expected = 100 * ((30 * 20) / (60 * LENGTH)) / (1 - 0.999) * LENGTH / (30 * 86400)
    line = next(t for t in next(s for s in report.sections if s.image == "budget-burn.png").text
                if t.startswith("encounter-booking-availability: the plotted burn ends at"))
    plotted = float(re.search(r"ends at ([0-9.e-]+) %", line).group(1))
    assert plotted == pytest.approx(expected, rel=0.25), (plotted, expected)


def test_report_without_prometheus(tmp_path):
    """Prometheus unreachable: the report still renders from the object, and each figure that
    needed Prometheus says why it is missing."""
    url = f"http://127.0.0.1:{free_port()}"
    slos = {name: SLOS[name] for name in BOOKING_SLOS}
    report = build(drill_object(), slos, url, slowest(), TraceLogs(missing="no cluster in this test"),
                   timeout=2)
    written = document.write(report, tmp_path)
    assert {p.name for p in written} == {"failover-timeline.png", "ledger.png", "slowest-request.png", "report.md",
                                         "report.html"}
    missing = {s.image: s.missing for s in report.sections if s.missing}
    assert set(missing) == {"latency-throughput.png", "budget-burn.png", "requests-per-shard.png"}
    for reason in missing.values():
        assert f"Prometheus at {url} could not be read" in reason
    markdown = (tmp_path / "report.md").read_text()
    assert markdown.count("> **Figure missing:** Prometheus at") == 3
    page = (tmp_path / "report.html").read_text()
    check_self_contained(page)
    assert page.count('class="missing"') == 3
    assert "No log lines: no cluster in this test" in markdown
    for section in report.sections:
        if section.image:
            assert section.sources, section.title


def test_report_of_a_drill_that_never_started(tmp_path):
    """An Aborted drill with no window, no Prometheus named: the header renders, every
    Prometheus figure says why it is missing."""
    drill = {"metadata": {"name": "refused", "namespace": "lab"}, "spec": {"labRef": "pim"},
             "status": {"phase": "Aborted", "verdict": "Aborted", "reason": "PreflightRefused", "ledger": None,
                        "message": "encounter-booking-availability has 3 % of its budget left (floor 10 %)"}}
    report = build(drill, {}, None)
    document.write(report, tmp_path)
    markdown = (tmp_path / "report.md").read_text()
    assert markdown.startswith("# Drill lab/refused: Aborted")
    assert "Reason: PreflightRefused" in markdown
    reasons = {s.image: s.missing for s in report.sections if s.image}
    assert [i for i, r in reasons.items() if r == "the drill has no window (status.window is unset): it never started"] \
        == ["latency-throughput.png", "budget-burn.png", "requests-per-shard.png"]
    assert all(reasons.values()), reasons
    assert not list(tmp_path.glob("*.png"))

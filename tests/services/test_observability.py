"""One request followed from its log line to its trace id and to the exemplar on its metric."""

from __future__ import annotations

import re
import time
from pathlib import Path

import yaml
from prometheus_client.openmetrics.parser import text_string_to_metric_families


def test_log_line_trace_id_and_metric_exemplar_agree(server):
    with server.client("sre", "sre-trace") as sre:
        resp = sre.get("/admin/shards", headers={"X-Request-Id": "trace-follow-1"})
        assert resp.status_code == 200
        trace_id = resp.headers["x-trace-id"]
        metrics = sre.get("/metrics", headers={"Accept": "application/openmetrics-text"}).text
    deadline = time.monotonic() + 5
    while True:
        lines = [l for l in server.log_lines() if l.get("correlation_id") == "trace-follow-1"]
        if lines or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert len(lines) == 1
    line = lines[0]
    assert line["request_id"] == resp.headers["x-request-id"] != "trace-follow-1"
    assert line["trace_id"] == trace_id and re.fullmatch(r"[0-9a-f]{32}", trace_id)
    assert re.fullmatch(r"[0-9a-f]{16}", line["span_id"])
    assert (line["user_id"], line["persona"], line["shard"], line["route"]) == ("sre-trace", "sre", "all", "/admin/shards")
    exemplars = [
        s.exemplar.labels["trace_id"]
        for fam in text_string_to_metric_families(metrics) if fam.name == "pim_http_request_duration_seconds"
        for s in fam.samples
        if s.exemplar and s.labels.get("route") == "/admin/shards" and s.labels.get("persona") == "sre"
    ]
    assert trace_id in exemplars


def test_traceparent_from_caller_is_continued(server):
    parent = "00-" + "1" * 32 + "-" + "2" * 16 + "-01"
    resp = server.client("sre", "sre-1").get("/providers", headers={"traceparent": parent})
    assert resp.headers["x-trace-id"] == "1" * 32


def test_redaction_keeps_identifiers_out_of_logs():
    import io
    import json
    import logging

    from api_services.telemetry import JsonFormatter

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    log = logging.getLogger("pim.test.redaction")
    log.addHandler(handler)
    log.warning("note mentions 123-45-6789 and jane@example.org", extra={"detail": "MRN-12345678 call 555-123-4567"})
    line = json.loads(stream.getvalue())
    text = json.dumps(line)
    for secret in ("123-45-6789", "jane@example.org", "MRN-12345678", "555-123-4567"):
        assert secret not in text
    assert "[REDACTED-SSN]" in line["message"]


def test_cluster_b_links_a_real_log_line_and_exemplar_to_the_trace(server):
    """Grafana on cluster B turns a log line into a trace link with Loki's derived field and an
    exemplar into one with Prometheus's exemplarTraceIdDestinations
    (clusters/cluster-b/grafana/datasources.yaml): both are tried on what a server writes."""
    root = Path(__file__).resolve().parents[2]
    provisioning = yaml.safe_load((root / "clusters/cluster-b/grafana/datasources.yaml").read_text())
    sources = {d["uid"]: d["jsonData"] for d in provisioning["datasources"] if "jsonData" in d}
    [field] = sources["loki"]["derivedFields"]
    [exemplar_link] = sources["prometheus"]["exemplarTraceIdDestinations"]
    with server.client("sre", "sre-loki") as sre:
        resp = sre.get("/admin/shards", headers={"X-Request-Id": "derived-field-1"})
        trace_id = resp.headers["x-trace-id"]
        metrics = sre.get("/metrics", headers={"Accept": "application/openmetrics-text"}).text
    deadline = time.monotonic() + 5
    while True:  # the raw line, as Loki stores it: the regex runs on the text, not on parsed JSON
        lines = [l for l in server.log_path.read_text().splitlines() if '"derived-field-1"' in l]
        if lines or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    [line] = lines
    assert re.search(field["matcherRegex"], line).group(1) == trace_id
    assert re.fullmatch(r"[0-9a-f]{32}", trace_id)
    labels = [s.exemplar.labels for fam in text_string_to_metric_families(metrics)
              if fam.name == "pim_http_request_duration_seconds" for s in fam.samples
              if s.exemplar and s.labels.get("route") == "/admin/shards"]
    assert {exemplar_link["name"]: trace_id} in labels

"""Cluster B (Grafana, Loki, Tempo, Pyroscope, kube-prometheus-stack) cannot run here. What
Grafana would load is checked as Grafana reads it: the datasource provisioning file (fields,
uids that cross-reference each other, `$` escaping), the dashboards' datasource references, and
the names both clusters use for each other (remote write, datasource URLs) against the
HelmReleases that make those Services. Dry runs on the apiserver: tests/cluster/test_cluster_b.py;
the Loki derived field against a real log line: tests/services/test_observability.py."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CLUSTERS = ROOT / "clusters"
DATASOURCES = CLUSTERS / "cluster-b/grafana/datasources.yaml"
DASHBOARDS = ROOT / "dashboards"
#: Grafana's plugin ids for the four datasources cluster B provisions.
TYPES = {"prometheus", "tempo", "loki", "grafana-pyroscope-datasource"}


def docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def release(cluster: str, name: str) -> dict:
    return next(d for d in docs(CLUSTERS / cluster / "flux.yaml")
                if d["kind"] == "HelmRelease" and d["metadata"]["name"] == name)


def datasources() -> dict[str, dict]:
    return {d["uid"]: d for d in yaml.safe_load(DATASOURCES.read_text())["datasources"]}


def walk(node, key: str):
    """Every value of `key` anywhere in a JSON/YAML tree."""
    if isinstance(node, dict):
        for k, v in node.items():
            if k == key:
                yield v
            yield from walk(v, key)
    elif isinstance(node, list):
        for item in node:
            yield from walk(item, key)


def grafana_expanded(text: str) -> str:
    """What Grafana makes of a provisioning value: `$$` is a literal `$`, any other `$NAME` or
    `${NAME}` an environment variable (none is meant here, so none may remain)."""
    assert "$" not in text.replace("$$", ""), f"unescaped $ (Grafana would expand it from its environment): {text}"
    return text.replace("$$", "$")


def test_datasource_file_has_what_grafana_provisioning_requires():
    provisioning = yaml.safe_load(DATASOURCES.read_text())
    assert provisioning["apiVersion"] == 1
    entries = provisioning["datasources"]
    for entry in entries:
        assert {"name", "type", "uid", "url"} <= entry.keys(), entry
        assert entry["type"] in TYPES, entry["type"]
        assert re.fullmatch(r"[a-zA-Z0-9_-]{1,40}", entry["uid"]), entry["uid"]
        assert urlsplit(entry["url"]).scheme == "http" and urlsplit(entry["url"]).hostname
    assert len({e["uid"] for e in entries}) == len({e["name"] for e in entries}) == len(entries)
    assert {e["type"] for e in entries} == TYPES, "Prometheus, Tempo, Loki and Pyroscope, once each"
    assert [e["uid"] for e in entries if e.get("isDefault")] == ["prometheus"]
    for value in walk(provisioning, "query"):
        grafana_expanded(value)
    for value in walk(provisioning, "url"):
        grafana_expanded(value)


def test_every_datasource_uid_named_in_a_correlation_is_provisioned():
    sources = datasources()
    named = list(walk([s.get("jsonData", {}) for s in sources.values()], "datasourceUid"))
    assert len(named) >= 7
    assert set(named) <= set(sources), f"unknown uids: {set(named) - set(sources)}"


def test_the_correlations_link_metrics_traces_and_logs_both_ways():
    sources = datasources()
    prometheus, tempo, loki = (sources[u]["jsonData"] for u in ("prometheus", "tempo", "loki"))
    # exemplars: the label the services put on them (api_services/telemetry.py RequestMetrics)
    assert prometheus["exemplarTraceIdDestinations"] == [{"name": "trace_id", "datasourceUid": "tempo"}]
    assert tempo["tracesToLogsV2"]["datasourceUid"] == "loki"
    assert "${__trace.traceId}" in grafana_expanded(tempo["tracesToLogsV2"]["query"])
    assert tempo["tracesToMetrics"]["datasourceUid"] == tempo["serviceMap"]["datasourceUid"] == "prometheus"
    assert tempo["tracesToProfiles"]["datasourceUid"] == "pyroscope"
    [field] = loki["derivedFields"]
    assert field["datasourceUid"] == "tempo" and grafana_expanded(field["url"]) == "${__value.raw}"
    regex = field["matcherRegex"]
    assert re.compile(regex).groups == 1, "Grafana links the first capture group"
    # Grafana runs it with Go's RE2: only what RE2 and Python read alike (no lookaround, no
    # backreference), so the Python checks of it hold for Grafana too
    assert not re.search(r"\(\?[=!<]|\\[1-9]", regex)


def test_trace_to_metrics_queries_parse_with_promtool(tmp_path):
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (make deps installs Debian's prometheus)")
    tempo = datasources()["tempo"]["jsonData"]["tracesToMetrics"]
    # Grafana replaces $__tags with the span's tags mapped to labels
    tags = ", ".join(f'{t["value"]}="x"' for t in tempo["tags"])
    rules = [{"record": f"tempo:query_{i}", "expr": grafana_expanded(q["query"]).replace("$__tags", tags)}
             for i, q in enumerate(tempo["queries"])]
    rule_file = tmp_path / "rules.yaml"
    rule_file.write_text(yaml.safe_dump({"groups": [{"name": "traces-to-metrics", "rules": rules}]}))
    proc = subprocess.run([promtool, "check", "rules", str(rule_file)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(rules)} rules found" in proc.stdout


def test_datasource_urls_name_the_services_cluster_b_installs():
    """Each URL is the Service its HelmRelease makes: fixed release names, one namespace."""
    sources = datasources()
    kps = release("cluster-b", "kube-prometheus-stack")
    expected = {
        "prometheus": f'{kps["spec"]["values"]["fullnameOverride"]}-prometheus',  # the chart's <fullname>-prometheus
        "tempo": release("cluster-b", "tempo")["spec"]["releaseName"],
        "loki": release("cluster-b", "loki")["spec"]["releaseName"] + "-gateway",
        "pyroscope": release("cluster-b", "pyroscope")["spec"]["releaseName"],
    }
    [namespace] = {d["spec"]["targetNamespace"] for d in docs(CLUSTERS / "cluster-b/flux.yaml")
                   if d["kind"] == "HelmRelease"}
    for uid, service in expected.items():
        assert urlsplit(sources[uid]["url"]).hostname == f"{service}.{namespace}", uid
    tempo_write = urlsplit(release("cluster-b", "tempo")["spec"]["values"]["tempo"]["metricsGenerator"]["remoteWriteUrl"])
    assert (tempo_write.hostname, tempo_write.port, tempo_write.path) == (
        urlsplit(sources["prometheus"]["url"]).hostname, 9090, "/api/v1/write")


def test_cluster_a_remote_writes_to_cluster_b_through_one_value():
    values = release("cluster-a", "kube-prometheus-stack")["spec"]["values"]
    [target] = values["prometheus"]["prometheusSpec"]["remoteWrite"]
    url = urlsplit(target["url"])
    kind_b = yaml.safe_load((CLUSTERS / "kind/cluster-b.yaml").read_text())["name"]
    kps_b = release("cluster-b", "kube-prometheus-stack")["spec"]["values"]["prometheus"]
    assert url.hostname == f"{kind_b}-control-plane", "cluster B's kind node, on the shared kind network"
    assert url.port == kps_b["service"]["nodePort"] and kps_b["service"]["type"] == "NodePort"
    assert url.path == "/api/v1/write" and kps_b["prometheusSpec"]["enableRemoteWriteReceiver"] is True
    assert target["sendExemplars"] is True and "exemplar-storage" in kps_b["prometheusSpec"]["enableFeatures"]
    written = [p for p in CLUSTERS.rglob("*.yaml") if url.netloc in p.read_text()]
    assert written == [CLUSTERS / "cluster-a/flux.yaml"] and written[0].read_text().count(url.netloc) == 1
    assert url.netloc in (ROOT / "docs/cluster-b.md").read_text(), "the value is documented"


def test_cluster_a_prometheus_answers_where_the_sample_lab_looks():
    values = release("cluster-a", "kube-prometheus-stack")["spec"]["values"]
    [service] = [m for m in values["extraManifests"] if m["kind"] == "Service"]
    lab = next(d for d in docs(ROOT / "samples/10-lab.yaml") if d["kind"] == "Lab")
    url = urlsplit(lab["spec"]["observability"]["prometheusUrl"])
    namespace = release("cluster-a", "kube-prometheus-stack")["spec"]["targetNamespace"]
    assert url.hostname == f'{service["metadata"]["name"]}.{namespace}'
    assert url.port == service["spec"]["ports"][0]["port"]
    # the Prometheus object the chart names <fullname>-prometheus; its pods carry that name
    assert service["spec"]["selector"]["operator.prometheus.io/name"] == f'{values["fullnameOverride"]}-prometheus'


def test_the_dashboards_kustomization_lists_every_dashboard_once():
    kustomization = yaml.safe_load((DASHBOARDS / "kustomization.yaml").read_text())
    [generator] = kustomization["configMapGenerator"]
    assert sorted(generator["files"]) == sorted(p.name for p in DASHBOARDS.glob("*.json"))
    assert kustomization["generatorOptions"]["labels"]["grafana_dashboard"] == "1"
    grafana = release("cluster-b", "grafana")["spec"]["values"]["sidecar"]
    assert (grafana["dashboards"]["label"], grafana["dashboards"]["labelValue"]) == ("grafana_dashboard", "1")
    provisioning = yaml.safe_load((CLUSTERS / "cluster-b/grafana/kustomization.yaml").read_text())
    [datasource_map] = provisioning["configMapGenerator"]
    assert datasource_map["options"]["labels"]["grafana_datasource"] == grafana["datasources"]["labelValue"] == "1"
    assert grafana["datasources"]["label"] == "grafana_datasource"


@pytest.mark.parametrize("path", sorted(DASHBOARDS.glob("*.json")), ids=lambda p: p.name)
def test_every_dashboard_queries_a_provisioned_datasource(path):
    dashboard = json.loads(path.read_text())
    sources = datasources()
    variables = {v["name"]: v for v in dashboard.get("templating", {}).get("list", [])}
    refs = [r for r in walk(dashboard, "datasource") if isinstance(r, dict)]
    assert refs, "a dashboard with no datasource reference"
    for ref in refs:
        uid = ref["uid"]
        if uid.startswith("${"):
            variable = variables[uid[2:-1]]
            assert variable["type"] == "datasource", uid
            matching = [s for s in sources.values() if s["type"] == variable["query"]]
            assert matching, f"{uid}: no provisioned datasource of type {variable['query']}"
        else:
            assert uid in sources, f"{path.name}: datasource uid {uid} is not provisioned"
            assert ref.get("type", sources[uid]["type"]) == sources[uid]["type"]


def test_the_operators_slo_dashboards_and_alert_rules_query_a_provisioned_datasource():
    from pimlab_operator.slo.desired import DATASOURCE_UID

    assert datasources()[DATASOURCE_UID]["type"] == "prometheus"

"""Cluster B (Grafana, Loki, Tempo, Pyroscope, kube-prometheus-stack) cannot run here. What
Grafana would load is checked as Grafana reads it: the datasource provisioning file (fields,
uids that cross-reference each other, `$` escaping), the dashboards' datasource references, and
the names both clusters use for each other (remote write, log push, OTLP, datasource URLs) against
the HelmReleases and Services that answer them, and the labels cluster A's log agent gives its
streams against the ones the datasources query. Dry runs on the apiserver: tests/cluster/test_cluster_b_manifests.py;
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


def receivers() -> dict[str, dict]:
    """Cluster B's NodePort Services for cluster A's logs and traces, by name."""
    return {d["metadata"]["name"]: d for d in docs(CLUSTERS / "cluster-b/receivers/services.yaml")}


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


# Cluster A's log and trace agent (Grafana Alloy). No Alloy binary is here to parse its config:
# the blocks are read structurally (balanced braces and strings, every component a pipeline names
# is declared), enough to read what the cross-references below depend on.

ALLOY_BLOCK = re.compile(r'^([a-z_]+(?:\.[a-z_]+)+)\s+"([a-z_]+)"\s*\{', re.MULTILINE)


def alloy_config() -> str:
    return release("cluster-a", "alloy")["spec"]["values"]["alloy"]["configMap"]["content"]


def alloy_components(config: str) -> dict[str, str]:
    """`component.label` -> the text of its top-level block, braces matched outside strings."""
    components = {}
    for match in ALLOY_BLOCK.finditer(config):
        depth, in_string, i = 1, False, match.end()
        while depth:
            char = config[i]
            if in_string:
                if char == "\\":
                    i += 1
                elif char == '"':
                    in_string = False
            elif char == '"':
                in_string = True
            elif char == "{":
                depth += 1
            elif char == "}":
                depth -= 1
            i += 1
        components[f"{match[1]}.{match[2]}"] = config[match.end():i - 1]
    return components


def alloy_string(body: str, attribute: str) -> str:
    [value] = re.findall(rf'^\s*{attribute}\s*=\s*"([^"]*)"', body, re.MULTILINE)
    return value


def log_stream_labels() -> dict[str, str]:
    """Every label cluster A's Alloy puts on a stream -> where its value comes from."""
    components = alloy_components(alloy_config())
    labels = {}
    for rule in re.findall(r"rule\s*\{([^}]*)\}", components["discovery.relabel.pod_logs"]):
        target = alloy_string(rule, "target_label")
        if not target.startswith("__"):  # __path__ and the like are dropped before sending
            labels[target] = " ".join(re.findall(r'"([^"]*)"', rule.split("source_labels", 1)[1].split("]")[0]))
    external = re.search(r"external_labels\s*=\s*\{([^}]*)\}", components["loki.write.cluster_b"])[1]
    labels.update({k: f"static {v}" for k, v in re.findall(r'([a-z_]+)\s*=\s*"([^"]*)"', external)})
    return labels


def loki_selector_labels(query: str) -> dict[str, str]:
    """Label name -> value matched, of a LogQL stream selector `{a="x", b=~"y"} ...`."""
    selector = re.match(r"\{([^}]*)\}", query)[1]
    return dict(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)\s*"([^"]*)"', selector))


def test_the_log_agent_config_is_well_formed_and_every_pipeline_reference_is_declared():
    config = alloy_config()
    components = alloy_components(config)
    assert config.count("{") == config.count("}") and config.count('"') % 2 == 0
    assert {"discovery.kubernetes.pods", "discovery.relabel.pod_logs", "local.file_match.pod_logs",
            "loki.source.file.pod_logs", "loki.process.pod_logs", "loki.write.cluster_b",
            "otelcol.receiver.otlp.lab", "otelcol.processor.batch.lab",
            "otelcol.exporter.otlphttp.cluster_b"} == set(components)
    references = re.findall(r"\b(?:targets|path_targets|forward_to|traces)\s*=\s*\[?([a-z_.]+(?:\s*,\s*[a-z_.]+)*)", config)
    named = [r.strip() for group in references for r in group.split(",")]
    assert len(named) == 7, named
    for reference in named:
        component, _, export = reference.rpartition(".")
        assert component in components and export in {"targets", "output", "receiver", "input"}, reference


def test_the_log_agent_ships_the_lab_namespaces_with_the_lines_as_written():
    values = release("cluster-a", "alloy")["spec"]["values"]
    components = alloy_components(alloy_config())
    lab = next(d for d in docs(ROOT / "samples/10-lab.yaml") if d["kind"] == "Lab")
    operator = docs(CLUSTERS / "base/operator/namespace.yaml")[0]["metadata"]["name"]
    names = re.search(r"names\s*=\s*\[([^]]*)\]", components["discovery.kubernetes.pods"])[1]
    assert set(re.findall(r'"([^"]*)"', names)) == {lab["metadata"]["namespace"], operator}
    # the node's container logs: the chart mounts the host's /var/log when asked
    assert values["controller"]["type"] == "daemonset" and values["alloy"]["mounts"]["varlog"] is True
    path_rule = next(r for r in re.findall(r"rule\s*\{([^}]*)\}", components["discovery.relabel.pod_logs"])
                     if '"__path__"' in r)
    assert alloy_string(path_rule, "replacement").startswith("/var/log/pods/")
    # containerd's prefix removed, nothing else: the JSON line (and its "trace_id") reaches Loki
    # whole, which is what the derived field's regex is tested on (tests/services/test_observability.py)
    assert re.findall(r"\bstage\.([a-z_]+)", components["loki.process.pod_logs"]) == ["cri"]


def test_trace_to_logs_queries_only_labels_the_log_agent_sets():
    """One set of labels: the agent's relabel rules and external labels on one side, the Tempo
    datasource's trace-to-logs selector and span-tag mapping on the other."""
    labels = log_stream_labels()
    assert {"namespace", "pod", "app", "cluster"} <= set(labels), labels
    to_logs = datasources()["tempo"]["jsonData"]["tracesToLogsV2"]
    tags = {t["key"]: t["value"] for t in to_logs["tags"]}
    # Grafana puts the mapped span tags in place of ${__tags}, as label="value" pairs
    query = grafana_expanded(to_logs["query"])
    assert "${__tags}" in query and "${__trace.traceId}" in query
    selector = loki_selector_labels(query.replace("${__tags}", ", ".join(f'{v}="x"' for v in tags.values())))
    assert set(selector) <= set(labels), f"queried but never set by the agent: {set(selector) - set(labels)}"
    # the same cluster name as cluster A's metrics (its Prometheus's external label)
    prometheus_a = release("cluster-a", "kube-prometheus-stack")["spec"]["values"]["prometheus"]["prometheusSpec"]
    assert labels["cluster"] == f'static {selector["cluster"]}' == f'static {prometheus_a["externalLabels"]["cluster"]}'
    # a span's service.name is its pod's app.kubernetes.io/name, which the agent makes `app`
    assert tags == {"service.name": "app"}
    assert labels["app"] == "__meta_kubernetes_pod_label_app_kubernetes_io_name"
    deployments = [d for d in docs(ROOT / "tests/golden/lab-pim.yaml") if d["kind"] == "Deployment"]
    assert len(deployments) >= 7
    for deployment in deployments:
        pod = deployment["spec"]["template"]
        env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0].get("env", [])}
        assert pod["metadata"]["labels"]["app.kubernetes.io/name"] == env["OTEL_SERVICE_NAME"], deployment["metadata"]["name"]


def assert_written_once_and_documented(netloc: str) -> None:
    written = [p for p in CLUSTERS.rglob("*.yaml") if netloc in p.read_text()]
    assert written == [CLUSTERS / "cluster-a/flux.yaml"] and written[0].read_text().count(netloc) == 1, written
    assert netloc in (ROOT / "docs/cluster-b.md").read_text(), f"{netloc} is not documented"


def test_cluster_a_logs_reach_cluster_b_loki_through_one_value():
    url = urlsplit(alloy_string(alloy_components(alloy_config())["loki.write.cluster_b"], "url"))
    kind_b = yaml.safe_load((CLUSTERS / "kind/cluster-b.yaml").read_text())["name"]
    assert url.hostname == f"{kind_b}-control-plane", "cluster B's kind node, on the shared kind network"
    assert url.scheme == "http" and url.path == "/loki/api/v1/push"
    service = receivers()["loki-push"]
    [port] = service["spec"]["ports"]
    assert service["spec"]["type"] == "NodePort" and url.port == port["nodePort"]
    loki = release("cluster-b", "loki")["spec"]
    assert loki["values"]["deploymentMode"] == "SingleBinary"
    assert service["spec"]["selector"] == {"app.kubernetes.io/name": loki["chart"]["spec"]["chart"],
                                           "app.kubernetes.io/instance": loki["releaseName"],
                                           "app.kubernetes.io/component": "single-binary"}
    assert port["targetPort"] == 3100, "Loki's HTTP port (the chart's default http_listen_port)"
    assert_written_once_and_documented(url.netloc)


def test_cluster_a_traces_reach_cluster_b_tempo_through_one_value():
    alloy = release("cluster-a", "alloy")["spec"]
    components = alloy_components(alloy["values"]["alloy"]["configMap"]["content"])
    # the sample Lab's otlpEndpoint is the Service `tempo` that cluster A's Alloy answers
    lab = next(d for d in docs(ROOT / "samples/10-lab.yaml") if d["kind"] == "Lab")
    endpoint = urlsplit(lab["spec"]["observability"]["otlpEndpoint"])
    [service] = [o for o in alloy["values"]["extraObjects"] if o["kind"] == "Service"]
    [port] = service["spec"]["ports"]
    assert endpoint.hostname == f'{service["metadata"]["name"]}.{alloy["targetNamespace"]}'
    assert endpoint.port == port["port"]
    assert service["spec"]["selector"] == {"app.kubernetes.io/name": alloy["chart"]["spec"]["chart"],
                                           "app.kubernetes.io/instance": alloy["releaseName"]}
    receiver = alloy_string(components["otelcol.receiver.otlp.lab"], "endpoint")
    assert int(receiver.rpartition(":")[2]) == port["targetPort"]
    assert port["targetPort"] in [p["targetPort"] for p in alloy["values"]["alloy"]["extraPorts"]]
    # from there to cluster B's node port in front of Tempo's OTLP/HTTP receiver
    url = urlsplit(alloy_string(components["otelcol.exporter.otlphttp.cluster_b"], "endpoint"))
    kind_b = yaml.safe_load((CLUSTERS / "kind/cluster-b.yaml").read_text())["name"]
    assert url.scheme == "http" and url.hostname == f"{kind_b}-control-plane" and url.path == ""
    tempo_service = receivers()["tempo-otlp"]
    [tempo_port] = tempo_service["spec"]["ports"]
    assert tempo_service["spec"]["type"] == "NodePort" and url.port == tempo_port["nodePort"]
    tempo = release("cluster-b", "tempo")["spec"]
    assert tempo_service["spec"]["selector"] == {"app.kubernetes.io/name": tempo["chart"]["spec"]["chart"],
                                                 "app.kubernetes.io/instance": tempo["releaseName"]}
    http = tempo["values"]["tempo"]["receivers"]["otlp"]["protocols"]["http"]["endpoint"]
    assert int(http.rpartition(":")[2]) == tempo_port["targetPort"] == endpoint.port
    assert_written_once_and_documented(url.netloc)


def test_cluster_b_node_ports_are_distinct_and_reached_over_the_kind_network():
    """Cluster A reaches cluster B's node ports on the kind Docker network: only Grafana's, for
    the user's browser, is mapped to the host."""
    flux_b = {d["metadata"]["name"]: d for d in docs(CLUSTERS / "cluster-b/flux.yaml") if d["kind"] == "HelmRelease"}
    ports = [flux_b["kube-prometheus-stack"]["spec"]["values"]["prometheus"]["service"]["nodePort"],
             flux_b["grafana"]["spec"]["values"]["service"]["nodePort"]]
    ports += [p["nodePort"] for s in receivers().values() for p in s["spec"]["ports"]]
    assert len(ports) == len(set(ports)) == 4 and all(30000 <= p <= 32767 for p in ports), ports
    kind_b = yaml.safe_load((CLUSTERS / "kind/cluster-b.yaml").read_text())
    mapped = [m["containerPort"] for n in kind_b["nodes"] for m in n.get("extraPortMappings", [])]
    assert mapped == [flux_b["grafana"]["spec"]["values"]["service"]["nodePort"]]

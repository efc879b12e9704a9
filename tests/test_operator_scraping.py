"""The lab's Prometheus scrapes the operator, on both paths that run it as a pod: `make lab`
(clusters/local/operator, the local monitoring stack of pimlab.cluster.monitoring) and Flux
(clusters/base/operator, cluster A's kube-prometheus-stack). Each link of the chain is checked
here: Prometheus selects the ServiceMonitor, the ServiceMonitor selects the Service and names
its port, the port leads to the container port the operator serves /metrics on. The manifests
themselves pass a server-side dry run in tests/cluster/test_deploy_manifests.py."""

from __future__ import annotations

from pathlib import Path

import yaml

from pimlab.cluster import monitoring

ROOT = Path(__file__).resolve().parents[1]
CLUSTERS = ROOT / "clusters"


def kustomized(directory: Path) -> list[dict]:
    """The objects of a kustomization's resources (files and directories, recursively)."""
    found = []
    for resource in yaml.safe_load((directory / "kustomization.yaml").read_text())["resources"]:
        path = (directory / resource).resolve()
        found += kustomized(path) if path.is_dir() else [d for d in yaml.safe_load_all(path.read_text()) if d]
    return found


def one(objects: list[dict], kind: str) -> dict:
    matching = [o for o in objects if o["kind"] == kind]
    assert len(matching) == 1, f"{len(matching)} {kind}s"
    return matching[0]


def selects(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector["matchLabels"].items())


def test_the_operators_service_monitor_leads_to_its_metrics_port():
    objects = kustomized(CLUSTERS / "local/operator")
    monitor, service, deployment = (one(objects, k) for k in ("ServiceMonitor", "Service", "Deployment"))
    assert monitor["metadata"]["namespace"] == service["metadata"]["namespace"]  # no namespaceSelector
    assert selects(monitor["spec"]["selector"], service["metadata"]["labels"])
    [endpoint] = monitor["spec"]["endpoints"]
    assert endpoint["path"] == "/metrics"
    port = next(p for p in service["spec"]["ports"] if p["name"] == endpoint["port"])
    assert selects({"matchLabels": service["spec"]["selector"]}, deployment["spec"]["template"]["metadata"]["labels"])
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    served = next(p["containerPort"] for p in container["ports"] if p["name"] == port["targetPort"])
    args = container["args"]
    assert int(args[args.index("--metrics-port") + 1]) == served


def test_the_local_labs_prometheus_selects_it_in_any_namespace():
    monitor = one(kustomized(CLUSTERS / "local/operator"), "ServiceMonitor")
    prometheus = one(monitoring.manifests(), "Prometheus")["spec"]
    assert selects(prometheus["serviceMonitorSelector"], monitor["metadata"]["labels"])
    assert prometheus["serviceMonitorNamespaceSelector"] == {}


def test_flux_applies_it_and_cluster_a_prometheus_selects_every_service_monitor():
    flux = [d for d in yaml.safe_load_all((CLUSTERS / "cluster-a/flux.yaml").read_text()) if d]
    operator = next(d for d in flux if d["kind"] == "Kustomization" and d["metadata"]["name"] == "pim-operator")
    assert one(kustomized(ROOT / operator["spec"]["path"]), "ServiceMonitor")["metadata"]["name"] == "pimlab-operator"
    stack = next(d for d in flux if d["kind"] == "HelmRelease" and d["metadata"]["name"] == "kube-prometheus-stack")
    assert stack["spec"]["values"]["prometheus"]["prometheusSpec"]["serviceMonitorSelectorNilUsesHelmValues"] is False

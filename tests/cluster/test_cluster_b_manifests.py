"""Cluster B as the apiserver sees it (nothing of it runs here: no helm-controller, no chart
repository, no Grafana): every manifest of its Flux path passes a server-side dry run with the
Flux CRDs installed, the kustomizations it points at build into the ConfigMaps Grafana's sidecars
load and the NodePort Services cluster A pushes logs and traces to, the Services cluster A adds to
its charts (Prometheus and Tempo for the sample Lab) are valid, and the Prometheus settings both clusters hand to kube-prometheus-stack (remote write,
receiver, exemplars) are valid for the real Prometheus CRD."""

from __future__ import annotations

import json

import yaml

from test_cluster_b import CLUSTERS, DASHBOARDS, DATASOURCES, ROOT, docs, receivers, release
from pimlab.cluster import monitoring

FLUX_B = CLUSTERS / "cluster-b/flux.yaml"


def dry_run(cluster, text: str) -> str:
    result = cluster.kubectl("apply", "--server-side", "--dry-run=server", "--force-conflicts", "-f", "-", input=text)
    return result.stdout


def test_every_cluster_b_flux_object_passes_a_server_side_dry_run(cluster, thirdparty_crds):
    cluster.kubectl("create", "namespace", "flux-system", check=False)
    out = dry_run(cluster, FLUX_B.read_text())
    for doc in docs(FLUX_B):
        kind = {"HelmRelease": "helmrelease.helm.toolkit.fluxcd.io", "HelmRepository":
                "helmrepository.source.toolkit.fluxcd.io", "GitRepository": "gitrepository.source.toolkit.fluxcd.io",
                "Kustomization": "kustomization.kustomize.toolkit.fluxcd.io"}[doc["kind"]]
        assert f"{kind}/{doc['metadata']['name']} serverside-applied (server dry run)" in out, out
    releases = {d["spec"]["chart"]["spec"]["chart"] for d in docs(FLUX_B) if d["kind"] == "HelmRelease"}
    assert releases == {"kube-prometheus-stack", "loki", "tempo", "pyroscope", "grafana"}


def test_the_kustomizations_cluster_b_points_at_build_into_the_sidecars_configmaps_and_receivers(cluster):
    paths = [d["spec"]["path"] for d in docs(FLUX_B) if d["kind"] == "Kustomization"]
    assert paths == ["./clusters/cluster-b/grafana", "./clusters/cluster-b/receivers"]
    built = cluster.kubectl("kustomize", str(ROOT / paths[1])).stdout
    services = {o["metadata"]["name"]: o for o in yaml.safe_load_all(built) if o}
    assert set(services) == set(receivers()) == {"loki-push", "tempo-otlp"}
    [namespace] = {o["metadata"]["namespace"] for o in services.values()}
    assert namespace == release("cluster-b", "loki")["spec"]["targetNamespace"]
    cluster.kubectl("create", "namespace", namespace, check=False)
    out = dry_run(cluster, built)  # (range and uniqueness of the node ports: tests/test_cluster_b.py)
    for name in services:
        assert f"service/{name} serverside-applied (server dry run)" in out, out
    built = cluster.kubectl("kustomize", str(ROOT / paths[0])).stdout
    objects = {o["metadata"]["name"]: o for o in yaml.safe_load_all(built) if o}
    assert set(objects) == {"pim-dashboards", "pim-grafana-datasources"}
    namespace = {o["metadata"]["namespace"] for o in objects.values()}.pop()
    cluster.kubectl("create", "namespace", namespace, check=False)
    out = dry_run(cluster, built)
    assert out.count("serverside-applied (server dry run)") == 2, out
    # one copy of each dashboard: the ConfigMap holds the files of dashboards/ byte for byte
    dashboards = objects["pim-dashboards"]
    assert dashboards["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dashboards["data"] == {p.name: p.read_text() for p in DASHBOARDS.glob("*.json")}
    for text in dashboards["data"].values():
        json.loads(text)
    datasources = objects["pim-grafana-datasources"]
    assert datasources["metadata"]["labels"]["grafana_datasource"] == "1"
    assert datasources["data"] == {"datasources.yaml": DATASOURCES.read_text()}


def test_the_prometheus_settings_of_both_clusters_are_valid_for_the_prometheus_crd(cluster, namespace):
    """kube-prometheus-stack copies prometheusSpec into its Prometheus object, less the chart's
    own selector switches: that object, dry-run against the real CRD, checks remoteWrite,
    sendExemplars, the receiver and the feature flags as prometheus-operator would get them."""
    monitoring.install_crds(cluster.plane)
    for name in ("cluster-a", "cluster-b"):
        spec = {k: v for k, v in release(name, "kube-prometheus-stack")["spec"]["values"]["prometheus"]
                ["prometheusSpec"].items() if not k.endswith("NilUsesHelmValues")}
        obj = {"apiVersion": "monitoring.coreos.com/v1", "kind": "Prometheus",
               "metadata": {"name": name, "namespace": namespace}, "spec": spec}
        out = dry_run(cluster, yaml.safe_dump(obj))
        assert f"prometheus.monitoring.coreos.com/{name} serverside-applied (server dry run)" in out, out


def test_the_services_cluster_a_adds_to_its_charts_pass_a_dry_run(cluster, namespace):
    """`prometheus` (kube-prometheus-stack's extraManifests) and `tempo` (Alloy's extraObjects):
    the two names the sample Lab's observability settings use in cluster A."""
    values = {name: release("cluster-a", name)["spec"]["values"] for name in ("kube-prometheus-stack", "alloy")}
    extra = values["kube-prometheus-stack"]["extraManifests"] + values["alloy"]["extraObjects"]
    assert sorted(o["metadata"]["name"] for o in extra) == ["prometheus", "tempo"]
    for obj in extra:
        obj = {**obj, "metadata": {**obj["metadata"], "namespace": namespace}}
        out = dry_run(cluster, yaml.safe_dump(obj))
        assert f'service/{obj["metadata"]["name"]} serverside-applied (server dry run)' in out, out

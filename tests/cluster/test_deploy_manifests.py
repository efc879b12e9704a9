"""What users deploy with (the operator's manifests, Flux objects, kind configs) is checked by
a real apiserver with the third-party CRDs installed: server-side dry run, no kind needed."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
CLUSTERS = ROOT / "clusters"


def docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def test_operator_manifests_pass_a_server_side_dry_run(cluster):
    base = CLUSTERS / "base/operator"
    cluster.apply(docs(base / "namespace.yaml"))
    result = cluster.kubectl("apply", "--server-side", "--dry-run=server", "-k", str(base))
    assert "deployment.apps/pimlab-operator serverside-applied (server dry run)" in result.stdout
    assert "clusterrole.rbac.authorization.k8s.io/pimlab-operator" in result.stdout


def test_operator_rbac_allows_what_it_reconciles_and_nothing_cluster_admin(
        cluster, crds_installed, thirdparty_crds):
    cluster.kubectl("apply", "--server-side", "-f", str(CLUSTERS / "base/operator/namespace.yaml"))
    cluster.kubectl("apply", "--server-side", "-f", str(CLUSTERS / "base/operator/rbac.yaml"))
    sa = "system:serviceaccount:pim-system:pimlab-operator"

    def can(verb: str, resource: str) -> bool:
        resource, _, subresource = resource.partition("/")
        extra = [f"--subresource={subresource}"] if subresource else []
        proc = cluster.kubectl("auth", "can-i", verb, resource, *extra, "--as", sa, "-n", "lab",
                               check=False)
        return proc.stdout.strip() == "yes"

    for verb, resource in [("patch", "labs.pim-sre.lab/status"),
                           ("patch", "shards.pim-sre.lab/status"), ("patch", "pods"), ("create", "deployments.apps"),
                           ("create", "statefulsets.apps"), ("create", "jobs.batch"),
                           ("delete", "pods"), ("create", "prometheusrules.monitoring.coreos.com"),
                           ("create", "events")]:
        assert can(verb, resource), f"the operator cannot {verb} {resource}"
    for verb, resource in [("create", "clusterrolebindings.rbac.authorization.k8s.io"),
                           ("create", "customresourcedefinitions.apiextensions.k8s.io"),
                           ("create", "pods/exec"), ("delete", "namespaces"), ("create", "nodes")]:
        assert not can(verb, resource), f"the operator must not {verb} {resource}"


def test_flux_objects_are_valid_for_the_flux_crds(cluster, thirdparty_crds):
    cluster.kubectl("create", "namespace", "flux-system", check=False)
    for name in ("cluster-a", "cluster-b"):
        path = CLUSTERS / name / "flux.yaml"
        result = cluster.kubectl("apply", "--server-side", "--dry-run=server", "-f", str(path))
        assert result.stdout.count("(server dry run)") == len(docs(path)), result.stdout


def test_flux_reconciles_the_paths_make_lab_applies():
    kustomizations = {d["metadata"]["name"]: d["spec"]["path"]
                      for d in docs(CLUSTERS / "cluster-a/flux.yaml") if d["kind"] == "Kustomization"}
    assert kustomizations == {"pim-crds": "./crds", "pim-operator": "./clusters/base/operator",
                              "pim-lab": "./samples"}
    for path in kustomizations.values():
        assert list((ROOT / path).glob("*.yaml")), path


def test_kind_configs_declare_the_two_clusters():
    a, b = (yaml.safe_load((CLUSTERS / "kind" / f).read_text()) for f in ("cluster-a.yaml", "cluster-b.yaml"))
    assert (a["kind"], a["apiVersion"], b["apiVersion"]) == ("Cluster", "kind.x-k8s.io/v1alpha4", "kind.x-k8s.io/v1alpha4")
    assert {a["name"], b["name"]} == {"pim-a", "pim-b"}
    assert a["networking"]["podSubnet"] != b["networking"]["podSubnet"], "the clusters must be routable to each other"
    assert len([n for n in a["nodes"] if n["role"] == "worker"]) >= 3, "one worker per AG replica"

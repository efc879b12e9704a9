"""What users deploy with (the operator's manifests, Flux objects, kind configs) is checked by
a real apiserver with the third-party CRDs installed: server-side dry run, no kind needed. The
dry runs force conflicts: they ask whether the apiserver accepts the objects, and fields another
manager holds on the live ones (Flux's, `make lab`'s) are no answer to that."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CLUSTERS = ROOT / "clusters"


def docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def test_operator_manifests_pass_a_server_side_dry_run(cluster, thirdparty_crds):
    base = CLUSTERS / "base/operator"
    cluster.apply(docs(base / "namespace.yaml"))
    result = cluster.kubectl("apply", "--server-side", "--dry-run=server", "--force-conflicts", "-k", str(base))
    assert "deployment.apps/pimlab-operator serverside-applied (server dry run)" in result.stdout
    assert "clusterrole.rbac.authorization.k8s.io/pimlab-operator" in result.stdout
    assert "servicemonitor.monitoring.coreos.com/pimlab-operator serverside-applied (server dry run)" in result.stdout


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
        result = cluster.kubectl("apply", "--server-side", "--dry-run=server", "--force-conflicts", "-f", str(path))
        assert result.stdout.count("(server dry run)") == len(docs(path)), result.stdout


def test_flux_reconciles_the_paths_make_lab_applies():
    kustomizations = {d["metadata"]["name"]: d["spec"]["path"]
                      for d in docs(CLUSTERS / "cluster-a/flux.yaml") if d["kind"] == "Kustomization"}
    assert kustomizations == {"pim-crds": "./crds", "pim-operator": "./clusters/base/operator",
                              "pim-lab": "./samples"}
    for path in kustomizations.values():
        assert list((ROOT / path).glob("*.yaml")), path


def test_kind_configs_pass_kinds_own_loader_and_validation(tmp_path):
    """kind's config loader and validator, built from its module (pimlab/cluster/kind_build.py)."""
    from pimlab.cluster import kind_build

    configs = sorted((CLUSTERS / "kind").glob("*.yaml"))
    proc = kind_build.check(configs)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count(": ok: cluster") == len(configs)
    bad = tmp_path / "bad.yaml"
    bad.write_text((CLUSTERS / "kind/cluster-a.yaml").read_text().replace("role: worker", "role: boss", 1))
    proc = kind_build.check([bad])
    assert proc.returncode == 1 and '"boss" is not a valid node role' in proc.stdout, proc.stdout


def test_kind_configs_declare_the_two_clusters():
    a, b = (yaml.safe_load((CLUSTERS / "kind" / f).read_text()) for f in ("cluster-a.yaml", "cluster-b.yaml"))
    assert (a["kind"], a["apiVersion"], b["apiVersion"]) == ("Cluster", "kind.x-k8s.io/v1alpha4", "kind.x-k8s.io/v1alpha4")
    assert {a["name"], b["name"]} == {"pim-a", "pim-b"}
    assert a["networking"]["podSubnet"] != b["networking"]["podSubnet"], "the clusters must be routable to each other"
    assert len([n for n in a["nodes"] if n["role"] == "worker"]) >= 3, "one worker per AG replica"


def test_every_kustomization_under_clusters_builds_and_passes_a_server_side_dry_run(cluster, crds_installed,
                                                                                   thirdparty_crds):
    directories = sorted(p.parent for p in CLUSTERS.rglob("kustomization.yaml"))
    assert {d.relative_to(CLUSTERS).as_posix() for d in directories} >= {"base/operator", "local/operator",
                                                                          "cluster-b/grafana", "cluster-b/receivers"}
    cluster.apply(docs(CLUSTERS / "base/operator/namespace.yaml"))
    for directory in directories:
        built = cluster.kubectl("kustomize", str(directory)).stdout
        objects = [d for d in yaml.safe_load_all(built) if d]
        for name in {o["metadata"].get("namespace") for o in objects} - {None}:
            cluster.kubectl("create", "namespace", name, check=False)  # made elsewhere (Flux, Helm)
        result = cluster.kubectl("apply", "--server-side", "--dry-run=server", "--force-conflicts", "-f", "-", input=built)
        assert result.stdout.count("(server dry run)") == len(objects), (directory, result.stdout)


def test_the_kind_path_applies_files_that_exist_and_a_valid_flux_bootstrap(cluster, thirdparty_crds):
    from pimlab import kind

    fork = "https://git.example.org/you/pim-sre-lab.git"
    for steps in (kind.up_steps(ROOT), kind.up_steps(ROOT, fork=fork), kind.down_steps()):
        for step in steps:
            for word in step.argv:
                if word.startswith(str(ROOT)):
                    assert Path(word).exists(), f"step '{step.name}' names {word}, which does not exist"
    bootstrap = kind.flux_bootstrap(ROOT, fork, "main")
    repo = next(d for d in yaml.safe_load_all(bootstrap) if d["kind"] == "GitRepository")
    assert repo["spec"]["url"] == fork
    cluster.kubectl("create", "namespace", "flux-system", check=False)
    result = cluster.kubectl("apply", "--server-side", "--dry-run=server", "--force-conflicts", "-f", "-", input=bootstrap)
    assert result.stdout.count("(server dry run)") == len(docs(CLUSTERS / "cluster-a/flux.yaml"))


def test_without_docker_the_kind_path_says_why():
    from pimlab import kind

    reason = kind.missing()
    if reason is None:
        pytest.skip("Docker and kind are here: the kind path can run")
    proc = subprocess.run([sys.executable, "-m", "pimlab.cli", "kind", "up"], capture_output=True, text=True)
    assert proc.returncode == 1
    assert f"the kind path cannot run here: {reason}" in proc.stdout

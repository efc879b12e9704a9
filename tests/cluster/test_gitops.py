"""Delivery from Git with a real Flux: source-controller and kustomize-controller (built from the
Go module proxy) reconcile cluster A's Kustomizations from a Git server on loopback
(`git http-backend`) serving this repository. Nothing of the lab is applied by hand: the test
bootstraps cluster A's GitRepository and Kustomizations (pointed at the loopback server) and
delivers every change as a commit pushed to the served repository.

What runs: the operator's Deployment, as Flux applies it, is on a kwok node (simulated); the
operator that reconciles is a local process with the token of the ServiceAccount Flux created,
watching the `lab` namespace (where the samples go)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from operator_process import free_port
from pimlab.cluster import flux_build, gitops, gitops_processes
from pimlab.cluster.gitops import NAMESPACE, GitOps
from pimlab.cluster.local_operator import OperatorProcess, write_operator_kubeconfig
from pimlab.cluster.procs import tail
from pimlab.waiting import TimedOut, wait_for

ROOT = Path(__file__).resolve().parents[2]
LAB = "lab"


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def condition(obj: dict | None, ctype: str = "Ready") -> dict:
    return next((c for c in ((obj or {}).get("status") or {}).get("conditions") or []
                 if c["type"] == ctype), {})


@pytest.fixture(scope="module")
def flux(cluster, tmp_path_factory):
    """Flux bootstrapped against the loopback Git server serving this tree's HEAD, the operator
    running once Flux applied its ServiceAccount; torn down so the session's cluster is as
    before (Flux prunes what it applied, except the CRDs: pim-crds never prunes)."""
    if not flux_build.is_built():
        pytest.skip("Flux is not built: `make flux` (make test builds it first)")
    ops = GitOps(ROOT, out=open(tmp_path_factory.mktemp("gitops") / "up.log", "w"))
    ops.up(ROOT, operator=False)
    workdir = tmp_path_factory.mktemp("gitops-operator")
    write_operator_kubeconfig(ops.plane, workdir / "kubeconfig")
    operator = OperatorProcess(workdir / "kubeconfig", workdir / "operator.log", workdir / "operator.pid",
                               metrics_port=free_port(), health_port=free_port(), namespaces=(LAB,))
    operator.start()
    ops.operator_log = operator.log
    try:
        ops.wait_ready("pim-lab", timeout=240)
        yield ops
    finally:
        # the lab pruned by Flux while the operator still runs (its finalizers); the operator's
        # RBAC and the CRDs kept (suspended: deleted without pruning), as other tests use them
        cluster.kubectl("delete", "kustomization", "pim-lab", "-n", NAMESPACE, "--timeout=120s",
                        check=False, timeout=130)
        cluster.kubectl("wait", "--for=delete", f"namespace/{LAB}", "--timeout=120s",
                        check=False, timeout=130)
        operator.stop()
        for name in ("pim-operator", "pim-crds"):
            cluster.kubectl("patch", "kustomization", name, "-n", NAMESPACE, "--type=merge",
                            "-p", '{"spec": {"suspend": true}}', check=False)
            cluster.kubectl("delete", "kustomization", name, "-n", NAMESPACE, "--timeout=60s",
                            check=False, timeout=70)
        cluster.kubectl("delete", "gitrepository", gitops.REPOSITORY, "-n", NAMESPACE,
                        "--timeout=60s", check=False, timeout=70)
        gitops_processes.stop(ops.layout)


@pytest.fixture(scope="module")
def checkout(flux, tmp_path_factory) -> Path:
    """A clone of the served repository: the test's commits are made here and pushed there."""
    path = tmp_path_factory.mktemp("checkout") / "repo"
    git("clone", "--quiet", str(gitops.served_repository(flux.layout)), str(path), cwd=path.parent)
    git("config", "user.email", "sre@pim.lab", cwd=path)
    git("config", "user.name", "PIM SRE", cwd=path)
    return path


def deliver(flux: GitOps, checkout: Path, message: str) -> str:
    """Commit what changed in `checkout`, push it to the served repository, ask for a fetch."""
    git("commit", "--quiet", "-am", message, cwd=checkout)
    git("push", "--quiet", "origin", f"HEAD:{gitops.BRANCH}", cwd=checkout)
    flux.reconcile()
    return git("rev-parse", "HEAD", cwd=checkout)


def kustomization(cluster, name: str) -> dict:
    return cluster.get("kustomization", name, NAMESPACE)


def applied(cluster, name: str, commit: str) -> dict:
    """The Kustomization once it has applied `commit` and is Ready."""
    return wait_for(lambda: (k := kustomization(cluster, name))
                    and commit in (k["status"].get("lastAppliedRevision") or "")
                    and condition(k).get("status") == "True" and k,
                    timeout=120, what=f"Kustomization {name} to apply {commit[:12]}")


def edit(checkout: Path, relative: str, old: str, new: str) -> None:
    path = checkout / relative
    text = path.read_text()
    assert old in text, f"{old!r} is not in {relative}"
    path.write_text(text.replace(old, new, 1))


def test_crds_operator_and_lab_come_from_git(cluster, flux):
    served = git("rev-parse", gitops.BRANCH, cwd=gitops.served_repository(flux.layout))
    for name in ("pim-crds", "pim-operator", "pim-lab"):
        k = applied(cluster, name, served)
        assert k["status"]["lastAppliedRevision"] == f"{gitops.BRANCH}@sha1:{served}"
    source = cluster.get("gitrepository", gitops.REPOSITORY, NAMESPACE)
    assert source["spec"]["url"] == gitops.url(flux.layout)
    assert condition(source).get("status") == "True", source["status"]

    for crd in ("labs", "shards", "personaloads", "chaosexperiments", "slos"):
        obj = cluster.get("crd", f"{crd}.pim-sre.lab")
        assert obj["metadata"]["labels"]["kustomize.toolkit.fluxcd.io/name"] == "pim-crds"
    deployment = cluster.get("deployment", "pimlab-operator", "pim-system")
    assert deployment["metadata"]["labels"]["kustomize.toolkit.fluxcd.io/name"] == "pim-operator"
    assert condition(deployment, "Available").get("status") == "True"  # its pod: on a kwok node

    try:
        lab = wait_for(lambda: (o := cluster.get("lab", "pim", LAB)) and condition(o, "Progressing").get("status") == "False"
                       and condition(o, "ShardsReady").get("status") and o,
                       timeout=60, what="the Lab's services to roll out")
    except TimedOut as error:  # seen once under heavy load: the operator's Lab worker went quiet
        raise AssertionError(f"{error}\noperator log ({flux.operator_log}):\n{tail(flux.operator_log, 30)}")
    assert lab["metadata"]["labels"]["kustomize.toolkit.fluxcd.io/name"] == "pim-lab"
    # its SQL Server Shards are simulated on kwok nodes: never bootstrapped, so never Ready
    assert condition(lab, "ShardsReady")["status"] == "False", lab["status"]
    assert condition(lab)["reason"] == "ShardsNotReady", lab["status"]
    assert lab["status"]["readyServices"] == lab["status"]["totalServices"]
    assert len(json.loads(cluster.kubectl("get", "shards", "-n", LAB, "-o", "json").stdout)["items"]) == 3
    # the Git path only: the HelmReleases of cluster-a/flux.yaml need a helm-controller
    assert not cluster.kubectl("get", "helmreleases.helm.toolkit.fluxcd.io", "-n", NAMESPACE,
                               "-o", "name", check=False).stdout.strip()


def test_the_gitops_runbooks_commands_run_against_flux(cluster, flux):
    """The runbook commands marked `[needs: make gitops]` (docs/runbooks/README.md), as written."""
    import os
    import sys

    from test_runbooks import RUNBOOKS, commands

    env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig),
           "PATH": f"{cluster.bin_dir}:{Path(sys.executable).parent}:{os.environ['PATH']}"}
    marked = [c for p in sorted(RUNBOOKS.glob("*.md")) for c, needs in commands(p.read_text())
              if needs == "make gitops"]
    assert len(marked) >= 4
    for command in marked:
        proc = subprocess.run(["bash", "-c", command], cwd=ROOT, env=env, capture_output=True, text=True, timeout=320)
        assert proc.returncode == 0, f"{command}\n{proc.stdout}{proc.stderr}"
        assert proc.stdout.strip(), command


def test_a_commit_changing_a_sample_reaches_the_object(cluster, flux, checkout):
    edit(checkout, "samples/40-personaloads.yaml",
         "profile: {pattern: ramp, rate: 20, peakRate: 120", "profile: {pattern: ramp, rate: 25, peakRate: 120")
    commit = deliver(flux, checkout, "overnight-processing: base rate 25/s")
    applied(cluster, "pim-lab", commit)
    load = wait_for(lambda: (p := cluster.get("personaload", "overnight-processing", LAB))
                    and p["spec"]["profile"]["rate"] == 25
                    and (p.get("status") or {}).get("observedGeneration") == p["metadata"]["generation"]
                    and p, timeout=60, what="the operator to reconcile the new rate")
    assert condition(load).get("status") == "True", load["status"]
    config = cluster.get("configmap", "overnight-processing-config", LAB)
    assert json.loads(config["data"]["config.json"])["profile"]["rate"] == 25


def test_a_commit_deleting_an_object_prunes_it(cluster, flux, checkout):
    assert cluster.get("chaosexperiment", "pod-kill", LAB) is not None
    git("rm", "--quiet", "samples/50-chaos.yaml", cwd=checkout)
    commit = deliver(flux, checkout, "no chaos drills in this lab")
    applied(cluster, "pim-lab", commit)
    wait_for(lambda: cluster.get("chaosexperiment", "pod-kill", LAB) is None
             and cluster.get("chaosexperiment", "sql-failover-drill", LAB) is None,
             timeout=60, what="Flux to prune the chaos experiments")
    assert cluster.get("lab", "pim", LAB) is not None


def test_a_bad_commit_fails_the_kustomization_and_the_lab_keeps_running(cluster, flux, checkout):
    good = git("rev-parse", "HEAD", cwd=checkout)
    edit(checkout, "samples/40-personaloads.yaml",
         "profile: {pattern: spike, rate: 50,", "profile: {pattern: spike, rate: -5,")
    bad = deliver(flux, checkout, "billing-burst: a negative rate (refused by the schema)")
    failed = wait_for(lambda: (k := kustomization(cluster, "pim-lab"))
                      and bad in (k["status"].get("lastAttemptedRevision") or "")
                      and condition(k).get("status") == "False" and k,
                      timeout=120, what="pim-lab to fail on the bad commit")
    message = condition(failed)["message"]
    assert "billing-burst" in message and "spec.profile.rate" in message, message
    assert "should be greater than 0" in message, message  # the apiserver's own words
    assert good in failed["status"]["lastAppliedRevision"]
    # nothing of the bad commit was applied, and the lab runs on
    assert cluster.get("personaload", "billing-burst", LAB)["spec"]["profile"]["rate"] == 50
    assert condition(cluster.get("lab", "pim", LAB), "Progressing").get("status") == "False"

    git("revert", "--no-edit", "HEAD", cwd=checkout)
    git("push", "--quiet", "origin", f"HEAD:{gitops.BRANCH}", cwd=checkout)
    flux.reconcile()
    applied(cluster, "pim-lab", git("rev-parse", "HEAD", cwd=checkout))

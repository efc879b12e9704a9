"""PersonaLoad runs on the local control plane, as far as kwok can show them. kwok marks Job
pods Completed without running anything, so an engine never reports here: what this shows is
the Job's shape (indexed completions, one pod per index), that a Job which completes without
results is Failed with NoResults (never Succeeded with an empty summary), that every status
field the operator writes survives the apiserver's pruning, and that deleting the PersonaLoad
deletes its Job and pods. The engine itself is tested in tests/load and tests/services; the run
on a real kubelet is tests/cluster/test_personaload_real_node.py."""

from __future__ import annotations


import pytest

from operator_process import operator_process
from pimlab.waiting import wait_for


@pytest.fixture(scope="module")
def operator(cluster, crds_installed, tmp_path_factory):
    with operator_process(cluster, tmp_path_factory, "load") as process:
        yield process


def load(name: str, namespace: str, **spec) -> dict:
    return {"apiVersion": "pim-sre.lab/v1alpha1", "kind": "PersonaLoad",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"target": {"url": "http://127.0.0.1:9"}, "image": "ghcr.io/pim-sre/lab:0.1.0",
                     "personas": [{"name": "patient", "weight": 3}, {"name": "admin", "weight": 1}],
                     "profile": {"rate": 5, "duration": "10s"}, "parallelism": 2, **spec}}


def condition(obj: dict | None, ctype: str = "Ready") -> dict:
    return next((c for c in ((obj or {}).get("status") or {}).get("conditions") or [] if c["type"] == ctype), {})


def pods_of(cluster, job: str, namespace: str) -> list[dict]:
    import yaml

    out = cluster.kubectl("get", "pods", "-n", namespace, "-l", f"batch.kubernetes.io/job-name={job}", "-o", "yaml")
    return yaml.safe_load(out.stdout)["items"]


def test_a_job_that_completes_without_reports_is_failed_never_succeeded(cluster, operator):
    ns = operator.namespace
    cluster.apply(load("no-engine", ns))
    seen = set()

    def finished():
        obj = cluster.get("personaload", "no-engine", ns)
        phase = ((obj or {}).get("status") or {}).get("phase")
        seen.add(phase)
        return obj if phase in ("Succeeded", "Failed") else None

    obj = wait_for(finished, timeout=120, what="the run to end")
    assert "Succeeded" not in seen
    status = obj["status"]
    assert status["phase"] == "Failed" and condition(obj)["reason"] == "NoResults"
    assert "no report" in condition(obj)["message"]
    assert condition(obj, "SummaryValid")["status"] == "False"
    assert "summary" not in status
    # pods counts are declared in the CRD: the apiserver kept them
    assert status["pods"]["expected"] == 2 and status["pods"]["reported"] == 0
    job = cluster.get("job", status["jobName"], ns)
    assert job["spec"]["completionMode"] == "Indexed" and job["spec"]["backoffLimitPerIndex"] == 0
    indices = sorted(p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"]
                     for p in pods_of(cluster, status["jobName"], ns))
    assert indices == ["0", "1"]  # one pod per share of the schedule


def test_deleting_the_personaload_deletes_its_job_and_pods(cluster, operator):
    ns = operator.namespace
    cluster.apply(load("short-lived", ns, profile={"rate": 5, "duration": "1h"}))
    job = wait_for(lambda: ((cluster.get("personaload", "short-lived", ns) or {}).get("status") or {}).get("jobName"),
                   timeout=60, what="the run's Job")
    wait_for(lambda: len(pods_of(cluster, job, ns)) == 2, timeout=60, what="two engine pods")
    owner = cluster.get("job", job, ns)["metadata"]["ownerReferences"][0]
    assert owner["kind"] == "PersonaLoad" and owner["controller"] and owner["blockOwnerDeletion"]
    cluster.kubectl("delete", "personaload", "short-lived", "-n", ns, "--wait=false")
    wait_for(lambda: cluster.get("job", job, ns) is None, timeout=90, what="the Job to be garbage-collected")
    wait_for(lambda: not pods_of(cluster, job, ns), timeout=90, what="the engine pods to be deleted")
    assert cluster.get("configmap", "short-lived-config", ns) is None

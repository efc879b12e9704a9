"""A PersonaLoad on a real kubelet: its Job's pods run the engine against the sample Lab's
gateway, and the status shows the summary merged from both pods with requests for every
persona; a run whose pods fail is Failed with the reason.

The lab is the one `make lab` runs on the real node (`sample_documents(real_node=True)`: a
namespace placed on the node, PostgreSQL shards, the image built here). The engine signs its
tokens with the Lab's development issuer key, which the operator generates once and mounts into
the Lab's pods and the Job. kwok nodes run nothing, so without a real node this test skips,
saying so."""

from __future__ import annotations


import pytest
import yaml

from operator_process import operator_process
from pimlab.cluster.local_lab import sample_documents
from pimlab.waiting import wait_for


def real_nodes(cluster) -> list[str]:
    nodes = yaml.safe_load(cluster.kubectl("get", "nodes", "-o", "yaml").stdout)["items"]
    return [n["metadata"]["name"] for n in nodes
            if (n["metadata"].get("annotations") or {}).get("kwok.x-k8s.io/node") != "fake"]


@pytest.fixture(scope="module")
def real_node(cluster):
    found = real_nodes(cluster)
    if not found:
        pytest.skip("no real node in this cluster (every node is a kwok node annotated kwok.x-k8s.io/node=fake): "
                    "engine pods would not run")
    return found[0]


@pytest.fixture(scope="module")
def lab(cluster, crds_installed, real_node, tmp_path_factory):
    """The real-node sample lab in a namespace of its own, its operator a local process."""
    docs = [d for d in sample_documents(real_node=True) if d["kind"] in ("Namespace", "Lab", "Shard")]
    with operator_process(cluster, tmp_path_factory, "real", documents=docs) as process:
        namespace = process.namespace
        wait_for(lambda: condition(cluster.get("lab", "pim", namespace)).get("status") == "True",
                 timeout=600, what="the sample Lab to become Ready on the real node")
        cluster.kubectl("wait", "--for=condition=Ready", "shard", "--all", "-n", namespace, "--timeout=300s",
                        timeout=310)
        seeded = wait_for(lambda: (p := cluster.kubectl("exec", "-n", namespace, "deployment/pim-admin", "--",
                                                        "pimlab", "seed", check=False, timeout=300)).returncode == 0
                          and p.stdout, timeout=180, interval=5, what="the shards to take the seed")
        assert '"seed": 42' in seeded, seeded
        yield namespace


def condition(obj: dict | None, ctype: str = "Ready") -> dict:
    return next((c for c in ((obj or {}).get("status") or {}).get("conditions") or [] if c["type"] == ctype), {})


def finished(cluster, name: str, namespace: str, timeout: float) -> dict:
    return wait_for(lambda: (o := cluster.get("personaload", name, namespace))
                    and (o.get("status") or {}).get("phase") in ("Succeeded", "Failed") and o,
                    timeout=timeout, what=f"PersonaLoad {name} to finish")


def test_engine_pods_drive_the_gateway_and_status_merges_both(cluster, lab):
    load = {"apiVersion": "pim-sre.lab/v1alpha1", "kind": "PersonaLoad",
            "metadata": {"name": "real-run", "namespace": lab},
            "spec": {"target": {"labRef": "pim"},
                     "personas": [{"name": p, "weight": w, "thinkTime": {"min": "0s", "max": "100ms"}}
                                  for p, w in (("patient", 3), ("clinician", 1), ("admin", 1))],
                     "population": {"patients": 60, "seed": 42},
                     "profile": {"rate": 6, "duration": "30s"}, "parallelism": 2,
                     "thresholds": {"errorRatio": 0.05}}}
    cluster.apply(load)
    obj = finished(cluster, "real-run", lab, timeout=300)
    status = obj["status"]
    assert status["phase"] == "Succeeded", condition(obj)
    assert status["pods"]["reported"] == 2 and status["summary"]["pods"] == 2
    by_persona = status["summary"]["byPersona"]
    assert {p: by_persona[p]["requests"] > 0 for p in ("patient", "clinician", "admin")} == \
        {"patient": True, "clinician": True, "admin": True}
    assert status["summary"]["latencyMs"]["p99"] > 0 and status["summary"]["thresholdsMet"] is True


def test_failing_engine_pods_make_the_run_failed_with_a_reason(cluster, lab):
    load = {"apiVersion": "pim-sre.lab/v1alpha1", "kind": "PersonaLoad",
            "metadata": {"name": "real-failing", "namespace": lab},
            "spec": {"target": {"url": "http://127.0.0.1:9"},  # nothing listens in the pod: every request fails
                     "image": cluster.get("lab", "pim", lab)["spec"]["image"],
                     "personas": [{"name": "admin", "weight": 1}],
                     "profile": {"rate": 5, "duration": "5s"}, "parallelism": 2,
                     "thresholds": {"errorRatio": 0.01}}}
    cluster.apply(load)
    obj = finished(cluster, "real-failing", lab, timeout=240)
    assert obj["status"]["phase"] == "Failed"
    assert condition(obj)["reason"] == "ThresholdsMissed" and obj["status"]["summary"]["errorRatio"] == 1

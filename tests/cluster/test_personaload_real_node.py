"""A PersonaLoad on a real kubelet: its Job's pods run the engine against the sample Lab's
gateway, and the status shows the summary merged from both pods with requests for every
persona; a run whose pods fail is Failed with the reason.

kwok nodes (annotated `kwok.x-k8s.io/node=fake`) run nothing, so this test needs a node
without that annotation and skips, saying so, where there is none.

Not yet run anywhere. What it depends on beyond the node: the engine mints its tokens with the
development issuer's key in its `PIM_DATA_DIR`, and the Lab's pods each keep their own key in an
emptyDir, so the gateway will answer 401 until the Lab and the PersonaLoad Job share one issuer
key (a Secret the operator generates, mounted into both)."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
import yaml

from pimlab.cluster.local_lab import OperatorProcess, install_operator_rbac, write_operator_kubeconfig
from pimlab.waiting import wait_for

ROOT = Path(__file__).resolve().parents[2]


def sample(kind: str, name: str, namespace: str) -> dict:
    for path in sorted((ROOT / "samples").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc["kind"] == kind and doc["metadata"]["name"] == name:
                doc["metadata"]["namespace"] = namespace
                return doc
    raise LookupError(f"{kind}/{name} is not in samples/")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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
    install_operator_rbac(cluster.plane)
    workdir = tmp_path_factory.mktemp("personaload-real")
    kubeconfig = workdir / "kubeconfig"
    write_operator_kubeconfig(cluster.plane, kubeconfig)
    namespace = f"real-{int(time.time()) % 100000}"
    cluster.kubectl("create", "namespace", namespace)
    process = OperatorProcess(kubeconfig, workdir / "operator.log", workdir / "operator.pid",
                              metrics_port=free_port(), health_port=free_port(), namespaces=(namespace,))
    process.start()
    cluster.apply([sample("Shard", f"shard-0{i}", namespace) for i in range(3)] + [sample("Lab", "pim", namespace)])
    wait_for(lambda: condition(cluster.get("lab", "pim", namespace)).get("status") == "True",
             timeout=600, what="the sample Lab to become Ready on the real node")
    yield namespace
    process.stop()
    cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


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

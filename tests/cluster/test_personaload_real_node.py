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

from operator_process import condition
from pimlab.waiting import wait_for


@pytest.fixture(scope="module")
def lab(real_sample_lab):
    """The run's real-node sample lab (tests/cluster/conftest.py), its operator a local process."""
    return real_sample_lab.namespace


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

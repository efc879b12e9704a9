"""Every child the Lab, Shard, SLO, PersonaLoad and ChaosExperiment reconcilers render for the
samples is accepted by the real apiserver (server-side dry run, third-party CRDs installed)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from pimlab_operator import kube
from pimlab_operator.chaos import desired as chaos
from pimlab_operator.lab import desired as lab
from pimlab_operator.personaload import desired as personaload
from pimlab_operator.shard import desired as shard
from pimlab_operator.slo import desired as slo
from pimlab_operator.kinds import BY_NAME

ROOT = Path(__file__).resolve().parents[2]


def samples(kind: str, namespace: str) -> list[dict]:
    found = []
    for path in sorted((ROOT / "samples").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc["kind"] == kind:
                doc["metadata"].update(namespace=namespace, uid=f"00000000-0000-0000-0000-{len(found):012d}",
                                       generation=1)
                found.append(doc)
    return found


def spec_of(body: dict):
    return BY_NAME[body["kind"]].spec_model.model_validate(body["spec"])


def children_of(kind: str, namespace: str) -> list[dict]:
    rendered = []
    if kind == "Lab":
        shard_map = lab.shard_map(samples("Shard", namespace), namespace, None)
        for body in samples(kind, namespace):
            rendered += lab.desired_children(body, spec_of(body), shard_map, with_service_monitor=True)
    elif kind == "Shard":
        for body in samples(kind, namespace):
            rendered += shard.desired_children(body, spec_of(body), password=shard.generate_password())
    elif kind == "SLO":
        for body in samples(kind, namespace):
            rendered += slo.desired_children(body, spec_of(body), with_prometheus_rule=True,
                                              with_grafana_operator=True)
    elif kind == "PersonaLoad":
        for body in samples(kind, namespace):
            rendered += personaload.desired_children(body, spec_of(body), "ghcr.io/pim-sre/lab:0.1.0")
    else:
        for body in samples(kind, namespace):
            for action, parameters in (("networkDelay", {"latency": "200ms", "jitter": "20ms"}),
                                       ("networkLoss", {"loss": "10"}), ("networkPartition", {}),
                                       ("cpuStress", {"cpuWorkers": 2, "cpuLoad": 80})):
                variant = copy.deepcopy(body)
                variant["metadata"]["name"] = f"{body['metadata']['name']}-{action.lower()}"
                variant["spec"] = {"action": action, "target": {"selector": {"matchLabels": {"app": "x"}}},
                                   "dryRun": False, "reference": "ADR-011", "duration": "1m",
                                   **({"parameters": parameters} if parameters else {})}
                rendered += chaos.chaos_mesh_children(variant, spec_of(variant), ["x-0"])
            break
    return rendered


@pytest.mark.parametrize("kind", ["Lab", "Shard", "SLO", "PersonaLoad", "ChaosExperiment"])
def test_rendered_children_pass_server_side_dry_run(cluster, crds_installed, thirdparty_crds, namespace, kind):
    rendered = children_of(kind, namespace)
    assert rendered
    for child in rendered:
        child["metadata"]["ownerReferences"] = []  # the sample owners do not exist in this namespace
        result = kube.apply(child, dry_run=True)
        assert result["metadata"]["name"] == child["metadata"]["name"], child["kind"]
    if kind == "SLO":
        assert {"PrometheusRule", "GrafanaAlertRuleGroup"} <= {c["kind"] for c in rendered}
    if kind == "Lab":
        assert {"ServiceMonitor", "HorizontalPodAutoscaler", "PodDisruptionBudget"} <= {c["kind"] for c in rendered}

"""The Lab's pure reconcile functions: children, shard map, status and conditions."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import yaml

from api_services.catalog import NAMES
from pimlab_operator import conditions
from pimlab_operator.lab import desired as lab
from pimlab_operator.objects import selector_matches
from cr_samples import spec_of

ROOT = Path(__file__).resolve().parents[2]


def sample(kind: str) -> list[dict]:
    found = []
    for path in sorted((ROOT / "samples").glob("*.yaml")):
        found += [d for d in yaml.safe_load_all(path.read_text()) if d and d["kind"] == kind]
    return found


def lab_body(**spec_changes) -> dict:
    body = copy.deepcopy(sample("Lab")[0])
    body["metadata"].update(uid="0000-lab", namespace="lab", generation=1)
    body["spec"].update(spec_changes)
    return body


SHARDS = sample("Shard")


def by(children: list[dict], kind: str, name: str) -> dict:
    return next(c for c in children if c["kind"] == kind and c["metadata"]["name"] == name)


def test_shard_map_version_moves_only_when_the_shards_change():
    first = lab.shard_map(SHARDS, "lab", None)
    assert first["version"] == 1 and first["slotCount"] == 1024
    assert [e["name"] for e in first["shards"]] == ["shard-00", "shard-01", "shard-02"]
    assert lab.shard_map(list(reversed(SHARDS)), "lab", first)["version"] == 1
    moved = copy.deepcopy(SHARDS)
    moved[2]["spec"]["slots"]["end"] = 1000
    second = lab.shard_map(moved, "lab", first)
    assert second["version"] == 2
    assert lab.slot_coverage(second["shards"]) == (1001, [])


def test_overlapping_slots_are_reported():
    overlapping = copy.deepcopy(SHARDS)
    overlapping[1]["spec"]["slots"]["start"] = 300
    owned, overlaps = lab.slot_coverage(lab.shard_entries(overlapping, "lab"))
    assert owned == 1024 and overlaps[0] == "slot 300: shard-00 and shard-01"


def test_children_are_owned_named_and_follow_the_service_contract():
    body = lab_body()
    shard_map = lab.shard_map(SHARDS, "lab", None)
    children = lab.desired_children(body, spec_of(body), shard_map, with_service_monitor=True)
    names = {(c["kind"], c["metadata"]["name"]) for c in children}
    for component in NAMES:
        assert {("Deployment", f"pim-{component}"), ("Service", f"pim-{component}"),
                ("PodDisruptionBudget", f"pim-{component}")} <= names
    assert ("ServiceMonitor", "pim") in names and ("ConfigMap", "pim-shard-map") in names
    for child in children:
        assert child["metadata"]["namespace"] == "lab"
        assert child["metadata"]["ownerReferences"][0]["uid"] == "0000-lab"
        assert child["metadata"]["labels"]["pim-sre.lab/lab"] == "pim"
    gateway = by(children, "Deployment", "pim-gateway")
    assert "replicas" not in gateway["spec"], "the HPA owns an autoscaled Deployment's replicas"
    container = gateway["spec"]["template"]["spec"]["containers"][0]
    assert container["args"] == ["serve", "--service", "gateway", "--port", "8080", "--host", "0.0.0.0"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["PIM_SHARD_MAP_FILE"] == "/etc/pim/shard-map/shard-map.json"
    assert env["PIM_ENCOUNTER_URL"] == "http://pim-encounter:80"
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert {f"/etc/pim/shard-credentials/shard-0{i}-credentials" for i in range(3)} <= mounts
    billing = by(children, "Deployment", "pim-billing")
    assert billing["spec"]["replicas"] == 1
    assert "PIM_ENCOUNTER_URL" not in {e["name"] for e in billing["spec"]["template"]["spec"]["containers"][0]["env"]}
    hpa = by(children, "HorizontalPodAutoscaler", "pim-gateway")
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 6)
    assert json.loads(by(children, "ConfigMap", "pim-shard-map")["data"]["shard-map.json"]) == shard_map


def test_no_service_monitor_without_its_crd_or_when_turned_off():
    shard_map = lab.shard_map(SHARDS, "lab", None)
    assert not [c for c in lab.desired_children(lab_body(), spec_of(lab_body()), shard_map, False) if c["kind"] == "ServiceMonitor"]
    off = lab_body(observability={"serviceMonitor": False})
    assert not [c for c in lab.desired_children(off, spec_of(off), shard_map, True) if c["kind"] == "ServiceMonitor"]


def ready_deployment(replicas: int) -> dict:
    return {"spec": {"replicas": replicas}, "status": {"readyReplicas": replicas}}


def test_status_while_rolling_out_and_when_ready():
    body = lab_body()
    shard_map = lab.shard_map(SHARDS, "lab", None)
    status, wanted = lab.lab_status(body, spec_of(body), shard_map, {})
    assert status["phase"] == "Progressing" and status["readyServices"] == 0
    assert [(c.type, c.status, c.reason) for c in wanted][:2] == [
        ("Ready", False, "ServicesNotReady"), ("Progressing", True, "RollingOut")]
    all_ready = {c: ready_deployment(2) for c in NAMES}
    status, wanted = lab.lab_status(body, spec_of(body), shard_map, all_ready)
    assert status["phase"] == "Ready" and status["readyServices"] == status["totalServices"] == 7
    assert wanted[0].status and wanted[0].reason == "AllServicesReady"


def test_uncovered_slots_keep_a_running_lab_from_ready():
    partial = lab.shard_map(SHARDS[:2], "lab", None)
    status, wanted = lab.lab_status(lab_body(), spec_of(lab_body()), partial,
                                    {c: ready_deployment(2) for c in NAMES})
    assert status["phase"] == "Degraded"
    assert (wanted[0].status, wanted[0].reason) == (False, "ShardSlotsUncovered")
    assert "341 of 1024 hash slots have no Shard" in wanted[0].message


def test_condition_transition_time_moves_only_when_status_changes():
    first = conditions.merge([], [conditions.Condition("Ready", False, "Waiting", "x")], 1, at="t1")
    same = conditions.merge(first, [conditions.Condition("Ready", False, "StillWaiting", "y")], 2, at="t2")
    assert same[0]["lastTransitionTime"] == "t1" and same[0]["reason"] == "StillWaiting"
    assert same[0]["observedGeneration"] == 2
    flipped = conditions.merge(same, [conditions.Condition("Ready", True, "Done", "z")], 2, at="t3")
    assert flipped[0]["lastTransitionTime"] == "t3" and flipped[0]["status"] == "True"


def test_selector_matching():
    assert selector_matches({"matchLabels": {"lab": "pim"}}, {"lab": "pim", "x": "y"})
    assert not selector_matches({"matchLabels": {"lab": "pim"}}, {"lab": "other"})
    assert selector_matches(None, {})
    assert not selector_matches(
        {"matchExpressions": [{"key": "tier", "operator": "In", "values": ["a"]}]}, {"tier": "b"})
    assert selector_matches(
        {"matchExpressions": [{"key": "tier", "operator": "DoesNotExist"}]}, {"lab": "pim"})


def test_without_auth_the_services_share_one_dev_issuer_key_generated_once():
    body = lab_body(auth=None)
    del body["spec"]["auth"]
    shard_map = lab.shard_map(SHARDS, "lab", None)
    pem = lab.generate_dev_issuer_key()
    first = lab.desired_children(body, spec_of(body), shard_map, False, pem)
    secret = by(first, "Secret", "pim-dev-issuer")
    assert secret["stringData"]["dev-issuer.pem"] == pem and "PRIVATE KEY" in pem
    later = lab.desired_children(body, spec_of(body), shard_map, False, None)
    assert not [c for c in later if c["kind"] == "Secret"], "never rewritten once it exists"
    for deployment in (c for c in later if c["kind"] == "Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
        assert env["PIM_DEV_ISSUER_KEY_FILE"] == "/etc/pim/dev-issuer/dev-issuer.pem"
        assert {"name": "dev-issuer", "secret": {"secretName": "pim-dev-issuer", "defaultMode": 0o440}} in pod["volumes"]
    with_auth = lab.desired_children(lab_body(), spec_of(lab_body()), shard_map, False, pem)
    assert not [c for c in with_auth if c["kind"] == "Secret"], "an OIDC issuer needs no dev key"

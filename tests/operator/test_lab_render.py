"""The Lab's pure reconcile functions: children, shard map, status and conditions."""

from __future__ import annotations

import copy
import json
from datetime import datetime, timezone
from pathlib import Path

import yaml

from api_services.catalog import NAMES
from pimlab_operator import conditions, reconcile
from pimlab_operator.lab import desired as lab
from pimlab_operator.lab import status as lab_status
from pimlab_operator.lab.model import Lab
from pimlab_operator.objects import selector_matches
from pimlab_operator.shard import desired as shard_desired
from pimlab_operator.shard import status as shard_status
from pimlab_operator.shard.failover import Decision, Memory, Observation
from pimlab_operator.shard.failover_pass import PassResult
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


def written(shard: dict, status, wanted) -> dict:
    """The Shard as the apiserver holds it once the operator wrote this status."""
    body = {**copy.deepcopy(shard), "metadata": {**shard["metadata"], "generation": 1}}
    return {**body, "status": reconcile.status_body(body, status, wanted)}


def ready_shard(shard: dict) -> dict:
    """A Shard whose failover pass found its primary and every standby streaming."""
    name = shard["metadata"]["name"]
    observations = [Observation(f"{name}-0", True, "primary", True, 100)] + [
        Observation(f"{name}-{i}", True, "standby", True, 100, True, f"{name}-0", True) for i in (1, 2)]
    result = PassResult(Decision(phase="Ready", reason="Healthy", target_primary=f"{name}-0"), observations,
                        Memory(f"{name}-0"))
    pods = [{"metadata": {"name": f"{name}-{i}", "labels": {shard_desired.ROLE_LABEL: "primary" if i == 0 else "secondary"}},
             "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}} for i in range(3)]
    return written(shard, *shard_status.failover_status(shard, spec_of(shard), {"status": {}}, pods, result, {},
                                                        datetime(2026, 12, 1, tzinfo=timezone.utc)))


def pending_shard(shard: dict) -> dict:
    """A Shard whose StatefulSet's pods are not ready (kwok: they never are)."""
    name = shard["metadata"]["name"]
    pods = [{"metadata": {"name": f"{name}-{i}"}, "status": {"phase": "Pending"}} for i in range(3)]
    return written(shard, *shard_status.shard_status(shard, spec_of(shard), {"status": {}}, pods))


READY_SHARDS = [ready_shard(s) for s in SHARDS]


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
    status, wanted = lab_status.lab_status(body, spec_of(body), shard_map, {}, READY_SHARDS)
    assert status.phase == "Progressing" and status.ready_services == 0
    assert [(c.type, c.status, c.reason) for c in wanted][:2] == [
        ("Ready", False, "ServicesNotReady"), ("Progressing", True, "RollingOut")]
    all_ready = {c: ready_deployment(2) for c in NAMES}
    status, wanted = lab_status.lab_status(body, spec_of(body), shard_map, all_ready, READY_SHARDS)
    assert status.phase == "Ready" and status.ready_services == status.total_services == 7
    assert wanted[0].status and wanted[0].reason == "AllServicesReady"


def test_uncovered_slots_keep_a_running_lab_from_ready():
    partial = lab.shard_map(SHARDS[:2], "lab", None)
    status, wanted = lab_status.lab_status(lab_body(), spec_of(lab_body()), partial,
                                           {c: ready_deployment(2) for c in NAMES}, READY_SHARDS)
    assert status.phase == "Degraded"
    assert (wanted[0].status, wanted[0].reason) == (False, "ShardSlotsUncovered")
    assert "341 of 1024 hash slots have no Shard" in wanted[0].message


def test_the_lab_is_not_ready_while_a_shard_it_routes_to_is_not():
    """kwok: every service runs, every Shard is Pending; the Lab says so, naming the Shards."""
    body = lab_body()
    shard_map = lab.shard_map(SHARDS, "lab", None)
    services = {c: ready_deployment(2) for c in NAMES}
    shards = [READY_SHARDS[0], pending_shard(SHARDS[1]), pending_shard(SHARDS[2])]
    status, wanted = lab_status.lab_status(body, spec_of(body), shard_map, services, shards)
    by_type = {c.type: c for c in wanted}
    assert (by_type["ShardsReady"].status, by_type["ShardsReady"].reason) == (False, "ShardsNotReady")
    assert by_type["ShardsReady"].message == "2/3 shards not Ready: shard-01 (PodsNotReady), shard-02 (PodsNotReady)"
    assert (by_type["Ready"].status, by_type["Ready"].reason) == (False, "ShardsNotReady")
    assert status.phase == "Pending" and "shard-01" in status.phase_reason and "shard-00" not in status.phase_reason
    assert status.ready_services == 7, "the services themselves are up"


def test_a_degraded_or_missing_shard_makes_the_lab_degraded_and_all_ready_shards_make_it_ready():
    body = lab_body()
    shard_map = lab.shard_map(SHARDS, "lab", None)
    services = {c: ready_deployment(2) for c in NAMES}
    broken = pending_shard(SHARDS[2])
    broken["status"]["phase"] = "Degraded"
    status, wanted = lab_status.lab_status(body, spec_of(body), shard_map, services, READY_SHARDS[:2] + [broken])
    assert status.phase == "Degraded" and not wanted[0].status
    status, wanted = lab_status.lab_status(body, spec_of(body), shard_map, services, READY_SHARDS[:2])
    shards_ready = next(c for c in wanted if c.type == "ShardsReady")
    assert not shards_ready.status and "shard-02 (NotFound)" in shards_ready.message
    status, wanted = lab_status.lab_status(body, spec_of(body), shard_map, services, READY_SHARDS)
    by_type = {c.type: c for c in wanted}
    assert (by_type["ShardsReady"].status, by_type["ShardsReady"].reason) == (True, "AllShardsReady")
    assert by_type["Ready"].status and status.phase == "Ready"


def test_the_lab_shows_shards_ready_in_a_printer_column():
    columns = {c.name: c for c in Lab.crd.columns}
    assert columns["Shards Ready"].json_path == '.status.conditions[?(@.type=="ShardsReady")].status'


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

"""engine: postgres — the rendered children, the policy and memory read from the Shard, and the
status written after a failover pass."""

from __future__ import annotations

import copy
from datetime import datetime, timedelta, timezone

from cr_samples import by, sample, spec_of

from pimlab_operator.shard import desired as shard
from pimlab_operator.shard import status as shard_status
from pimlab_operator.shard.failover import Decision, Memory, Observation
from pimlab_operator.shard.failover_pass import PassResult
from pimlab_operator.shard.model import FailoverRecord

T0 = datetime(2026, 11, 30, 12, 0, tzinfo=timezone.utc)


def pg_shard(**spec) -> dict:
    body = copy.deepcopy(sample("Shard", "shard-00"))
    body["spec"].pop("image", None)
    body["spec"].pop("edition", None)
    body["spec"].update({"engine": "postgres", **spec})
    return body


def pod(name, role=None):
    labels = {**shard.selector("shard-00", "postgres"), **({shard.ROLE_LABEL: role} if role else {})}
    return {"metadata": {"name": name, "labels": labels}, "spec": {"nodeName": "node-0"},
            "status": {"phase": "Running", "podIP": "127.0.0.9", "conditions": [{"type": "Ready", "status": "True"}]}}


def test_postgres_children_run_the_instance_manager_in_the_project_image():
    body = pg_shard()
    children = shard.desired_children(body, spec_of(body), "Generated-Passw0rd", "tok")
    names = [(c["kind"], c["metadata"]["name"]) for c in children]
    assert names == [("Secret", "shard-00-credentials"), ("Service", "shard-00"), ("ConfigMap", "shard-00-instances"),
                     ("StatefulSet", "shard-00"),
                     ("Service", "shard-00-primary"), ("Service", "shard-00-readonly"),
                     ("PodDisruptionBudget", "shard-00")]
    secret = by(children, "Secret", "shard-00-credentials")["stringData"]
    assert secret == {"username": "pim", "password": "Generated-Passw0rd", "manager-token": "tok"}
    sts = by(children, "StatefulSet", "shard-00")
    container = sts["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "ghcr.io/pim-sre/lab:0.1.0"
    assert container["command"] == ["pimlab", "instance", "run"]
    # pause reaps the backends a crashed postmaster leaves (the instance manager never does)
    assert sts["spec"]["template"]["spec"]["shareProcessNamespace"] is True
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["PIMLAB_PEERS"] == ",".join(f"shard-00-{i}=shard-00-{i}.shard-00.lab.svc:5432:8008" for i in range(3))
    assert env["PIMLAB_SYNCHRONOUS"] == "1"
    assert by(children, "ConfigMap", "shard-00-instances")["data"] == {"bootstrap-primary": "shard-00-0"}
    assert not [e for e in container["env"] if "PASSWORD" in e["name"]]  # the password stays in mounted files
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert {m["mountPath"] for m in container["volumeMounts"]} >= {"/var/lib/pimlab/data", "/etc/pim/credentials"}
    assert sts["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] == "20Gi"
    primary = by(children, "Service", "shard-00-primary")["spec"]
    assert primary["selector"] == {**shard.selector("shard-00", "postgres"), "pim-sre.lab/role": "primary"}
    assert primary["ports"][0]["port"] == 5432


def test_spec_image_and_primary_are_honoured():
    body = pg_shard(image="registry.local/pim:1", primary="shard-00-2")
    children = shard.desired_children(body, spec_of(body), None)
    container = by(children, "StatefulSet", "shard-00")["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "registry.local/pim:1"
    assert by(children, "ConfigMap", "shard-00-instances")["data"] == {"bootstrap-primary": "shard-00-2"}


def test_a_switchover_changes_no_pod_template():
    """spec.primary asks the failover manager for a switchover: a pod template that changed with
    it would roll every pod, the primary first among equals, and turn the switchover into an
    unplanned failover (seen on the real node). Only the bootstrap ConfigMap follows it."""
    before, after = pg_shard(), pg_shard(primary="shard-00-2")
    rendered = [shard.desired_children(body, spec_of(body), None) for body in (before, after)]
    templates = [by(children, "StatefulSet", "shard-00")["spec"]["template"] for children in rendered]
    assert templates[0] == templates[1]
    env = {e["name"]: e for e in templates[0]["spec"]["containers"][0]["env"]}
    assert env["PIMLAB_BOOTSTRAP_PRIMARY"]["valueFrom"]["configMapKeyRef"] == {"name": "shard-00-instances",
                                                                               "key": "bootstrap-primary"}


def test_policy_and_memory_come_from_the_shard():
    body = pg_shard(failover={"automatic": True, "unhealthyAfterSeconds": 12, "allowDataLoss": False})
    body["metadata"]["annotations"] = {shard.SWITCHOVER_ANNOTATION: "shard-00-1"}
    policy = shard_status.policy_of(body, spec_of(body))
    assert (policy.unhealthy_after_seconds, policy.synchronous_required, policy.planned_primary) == (12, 1, "shard-00-1")
    assert shard.synchronous_members(spec_of(body)) == 2
    body["status"] = {"engine": "postgres", "currentPrimary": "shard-00-0", "primaryUnhealthySince": "2026-11-30T12:00:00Z",
                      "failoverInProgress": {"from": "shard-00-0", "reason": "PrimaryUnhealthy",
                                             "startedAt": "2026-11-30T12:00:30Z"}}
    memory = shard_status.memory_from_status(body, spec_of(body))
    assert memory.current_primary == "shard-00-0" and memory.unhealthy_since == T0
    assert memory.failover_started_at == T0 + timedelta(seconds=30) and memory.failover_reason == "PrimaryUnhealthy"


def test_status_after_a_completed_failover():
    body = pg_shard()
    body["status"] = {"engine": "postgres", "currentPrimary": "shard-00-0", "currentPrimaryTimestamp": "2026-11-30T11:00:00Z",
                      "failoverCount": 2}
    observations = [Observation("shard-00-0", False),
                    Observation("shard-00-1", True, "primary", True, 5000, True),
                    Observation("shard-00-2", True, "standby", True, 4990, True, "shard-00-1", True)]
    completed = FailoverRecord(from_="shard-00-0", to="shard-00-1", reason="PrimaryUnhealthy", planned=False,
                               primary_lost_at=T0, started_at=T0 + timedelta(seconds=30),
                               completed_at=T0 + timedelta(seconds=31.5), duration_seconds=1.5, outage_seconds=31.5)
    result = PassResult(Decision(phase="Degraded", reason="StandbysNotStreaming", message="shard-00-0 not streaming",
                                 target_primary="shard-00-1"), observations, Memory("shard-00-1"), completed)
    pods = [pod("shard-00-1", "primary"), pod("shard-00-2", "secondary")]
    details = {"shard-00-2": {"synchronization_state": "streaming/quorum", "synchronous_commit": True, "lag_bytes": 10}}
    typed, conditions = shard_status.failover_status(body, spec_of(body), {"status": {}}, pods, result, details,
                                                     T0 + timedelta(seconds=32))
    status = typed.to_k8s()
    assert status["currentPrimary"] == status["targetPrimary"] == "shard-00-1"
    assert status["currentPrimaryTimestamp"] == "2026-11-30T12:00:32Z"
    assert status["failoverCount"] == 3 and status["lastFailover"]["durationSeconds"] == 1.5
    assert status["lastFailover"]["from"] == "shard-00-0"
    assert status["failoverHistory"] == [status["lastFailover"]]
    replicas = {r["pod"]: r for r in status["replicas"]}
    assert replicas["shard-00-0"] == {"pod": "shard-00-0", "role": "unknown", "ready": False}
    assert replicas["shard-00-2"]["lagBytes"] == 10 and replicas["shard-00-2"]["synchronizationState"] == "streaming/quorum"
    assert status["readyReplicas"] == 2 and "failoverInProgress" not in status
    kinds = {c.type: c for c in conditions}
    assert not kinds["Ready"].status and kinds["Degraded"].status and kinds["Degraded"].reason == "StandbysNotStreaming"


def test_status_during_a_refused_failover_says_why():
    body = pg_shard()
    body["status"] = {"engine": "postgres", "currentPrimary": "shard-00-0"}
    decision = Decision(phase="Degraded", reason="QuorumNotObserved", message="only 1 of 2 synchronous standbys answer",
                        refused=True, unhealthy_since=T0, failover_started_at=T0, failover_from="shard-00-0",
                        failover_reason="PrimaryUnhealthy")
    memory = Memory("shard-00-0", T0, T0, "shard-00-0", "PrimaryUnhealthy")
    result = PassResult(decision, [Observation("shard-00-1", True, "standby", True, 10, True)], memory)
    typed, conditions = shard_status.failover_status(body, spec_of(body), {"status": {}}, [pod("shard-00-1", "secondary")],
                                                     result, {}, T0)
    status = typed.to_k8s()
    degraded = next(c for c in conditions if c.type == "Degraded")
    assert degraded.status and degraded.reason == "QuorumNotObserved"
    assert status["failoverInProgress"] == {"from": "shard-00-0", "reason": "PrimaryUnhealthy", "startedAt": "2026-11-30T12:00:00Z"}
    assert status["primaryUnhealthySince"] == "2026-11-30T12:00:00Z"


def test_kwok_pods_are_reported_not_contacted():
    body = pg_shard()
    status, conditions = shard_status.failover_status(body, spec_of(body), {"status": {}}, [pod("shard-00-0")], None,
                                                      {}, T0, unreachable_reason="the pods run on simulated (kwok) nodes")
    assert status.phase == "Pending" and "kwok" in status.phase_reason
    assert next(c for c in conditions if c.type == "Ready").reason == "InstancesUnreachable"


def test_two_pods_labelled_primary_are_degraded():
    body = pg_shard()
    body["status"] = {"engine": "postgres", "currentPrimary": "shard-00-0"}
    result = PassResult(Decision(phase="Ready"), [Observation("shard-00-0", True, "primary", True, 1)], Memory("shard-00-0"))
    status, conditions = shard_status.failover_status(body, spec_of(body), {"status": {}},
                                                      [pod("shard-00-0", "primary"), pod("shard-00-1", "primary")],
                                                      result, {}, T0)
    assert status.phase == "Degraded" and next(c for c in conditions if c.type == "Degraded").reason == "MultiplePrimaries"


def test_the_postgres_sample_variant_parses_and_renders():
    import yaml
    from pimlab_operator.render import project_home
    from pimlab_operator.shard.model import Shard

    docs = list(yaml.safe_load_all((project_home() / "samples" / "postgres" / "20-shards.yaml").read_text()))
    assert [d["metadata"]["name"] for d in docs] == ["shard-00", "shard-01", "shard-02"]
    for doc in docs:
        Shard.model_validate(doc)
        body = {**doc, "metadata": {**doc["metadata"], "uid": "uid-" + doc["metadata"]["name"]}}
        sts = by(shard.desired_children(body, spec_of(body), None), "StatefulSet", doc["metadata"]["name"])
        assert sts["spec"]["template"]["spec"]["containers"][0]["command"] == ["pimlab", "instance", "run"]


def test_every_status_field_written_is_declared_in_the_crd():
    from pimlab_operator import crdgen
    from pimlab_operator.shard.model import Shard

    schema = crdgen.crd(Shard)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]

    def check(value, node, path):
        if isinstance(value, dict):
            props = node.get("properties") or {}
            for key, inner in value.items():
                assert key in props, f"status{path}.{key} is not declared in shard/model.py"
                check(inner, props[key], f"{path}.{key}")
        elif isinstance(value, list):
            for item in value:
                check(item, node["items"], f"{path}[]")

    body = pg_shard()
    body["status"] = {"engine": "postgres", "currentPrimary": "shard-00-0"}
    observations = [Observation("shard-00-0", False), Observation("shard-00-1", True, "primary", True, 5000, True),
                    Observation("shard-00-2", True, "standby", True, 4990, True, "shard-00-1", True)]
    completed = FailoverRecord(from_="shard-00-0", to="shard-00-1", reason="PrimaryUnhealthy", planned=False,
                               data_loss=True, primary_lost_at=T0, started_at=T0 + timedelta(seconds=30),
                               completed_at=T0 + timedelta(seconds=31.5), duration_seconds=1.5, outage_seconds=31.5)
    memory = Memory("shard-00-1", T0, T0, "shard-00-0", "PrimaryUnhealthy")
    result = PassResult(Decision(phase="FailingOver", reason="ConfirmingWrites", target_primary="shard-00-1"),
                        observations, memory, completed)
    details = {"shard-00-2": {"synchronization_state": "streaming/quorum", "synchronous_commit": True, "lag_bytes": 10}}
    typed, _ = shard_status.failover_status(body, spec_of(body), {"status": {}},
                                            [pod("shard-00-1", "primary"), pod("shard-00-2", "secondary")],
                                            result, details, T0)
    status = typed.to_k8s()
    assert "failoverInProgress" in status and "lastFailover" in status
    check(status, schema, "")


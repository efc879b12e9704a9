"""The Shard's pure reconcile functions: children, AG T-SQL, role labels and status."""

from __future__ import annotations

import copy

from cr_samples import by, sample, spec_of

from pimlab_operator.shard import desired as shard
from pimlab_operator.shard import status as shard_status

SHARD = sample("Shard", "shard-00")


def pod(name: str, role: str | None = None, ready: bool = True, phase: str = "Running",
        unschedulable: str | None = None) -> dict:
    labels = {**shard.selector("shard-00"), **({shard.ROLE_LABEL: role} if role else {})}
    conditions = [{"type": "Ready", "status": "True" if ready else "False"}]
    if unschedulable:
        conditions.append({"type": "PodScheduled", "status": "False", "message": unschedulable})
    return {"metadata": {"name": name, "labels": labels},
            "status": {"phase": phase, "conditions": conditions}}


def test_children_are_owned_and_named_after_the_shard():
    children = shard.desired_children(SHARD, spec_of(SHARD), password="Generated-Passw0rd")
    names = [(c["kind"], c["metadata"]["name"]) for c in children]
    assert names == [("Secret", "shard-00-credentials"), ("ConfigMap", "shard-00-mssql"),
                     ("Service", "shard-00"), ("StatefulSet", "shard-00"),
                     ("Service", "shard-00-primary"), ("Service", "shard-00-readonly"),
                     ("PodDisruptionBudget", "shard-00")]
    for child in children:
        ref = child["metadata"]["ownerReferences"][0]
        assert (ref["kind"], ref["name"], ref["uid"], ref["controller"]) == ("Shard", "shard-00", "uid-shard-00", True)
        assert child["metadata"]["namespace"] == "lab"
        assert child["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "pimlab-operator"
        assert "generateName" not in child["metadata"]


def test_secret_only_when_a_password_is_given_and_the_user_named_none():
    without = shard.desired_children(SHARD, spec_of(SHARD), password=None)
    assert not [c for c in without if c["kind"] == "Secret"]
    user_secret = copy.deepcopy(SHARD)
    user_secret["spec"]["credentialsSecretRef"] = {"name": "my-sa"}
    assert not shard.generates_credentials(spec_of(user_secret))
    children = shard.desired_children(user_secret, spec_of(user_secret), password="ignored-Passw0rd")
    assert not [c for c in children if c["kind"] == "Secret"]
    env = by(children, "StatefulSet", "shard-00")["spec"]["template"]["spec"]["containers"][0]["env"]
    sa = next(e for e in env if e["name"] == "MSSQL_SA_PASSWORD")
    assert sa["valueFrom"]["secretKeyRef"] == {"name": "my-sa", "key": "password"}


def test_generated_secret_has_username_and_password_keys():
    secret = by(shard.desired_children(SHARD, spec_of(SHARD), password="Generated-Passw0rd"), "Secret", "shard-00-credentials")
    assert secret["stringData"]["username"] == "sa"
    assert secret["stringData"]["password"] == "Generated-Passw0rd"


def test_generated_passwords_meet_sql_server_complexity_and_differ():
    first, second = shard.generate_password(), shard.generate_password()
    assert first != second and len(first) == 32
    assert any(c.isupper() for c in first) and any(c.islower() for c in first)
    assert any(c.isdigit() for c in first) and any(not c.isalnum() for c in first)


def test_statefulset_runs_sql_server_with_hadr_and_volumes_from_the_spec():
    body = copy.deepcopy(SHARD)
    body["spec"]["storage"] = {"size": "50Gi", "storageClassName": "fast"}
    sts = by(shard.desired_children(body, spec_of(body), None), "StatefulSet", "shard-00")
    assert sts["spec"]["replicas"] == 3 and sts["spec"]["serviceName"] == "shard-00"
    container = sts["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "mcr.microsoft.com/mssql/server:2022-latest"
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["ACCEPT_EULA"] == "Y" and env["MSSQL_PID"] == "Developer" and env["MSSQL_ENABLE_HADR"] == "1"
    assert {p["containerPort"] for p in container["ports"]} == {1433, 5022}
    assert container["resources"] == {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"memory": "4Gi"}}
    claim = sts["spec"]["volumeClaimTemplates"][0]["spec"]
    assert claim["resources"]["requests"]["storage"] == "50Gi" and claim["storageClassName"] == "fast"


def test_role_services_select_pods_by_role_label_and_shard():
    children = shard.desired_children(SHARD, spec_of(SHARD), None)
    primary = by(children, "Service", "shard-00-primary")["spec"]["selector"]
    readonly = by(children, "Service", "shard-00-readonly")["spec"]["selector"]
    assert primary == {**shard.selector("shard-00"), "pim-sre.lab/role": "primary"}
    assert readonly == {**shard.selector("shard-00"), "pim-sre.lab/role": "secondary"}
    headless = by(children, "Service", "shard-00")["spec"]
    assert headless["clusterIP"] == "None" and headless["selector"] == shard.selector("shard-00")
    assert by(children, "PodDisruptionBudget", "shard-00")["spec"]["maxUnavailable"] == 1


def test_config_enables_hadr_and_renders_an_external_availability_group():
    config = by(shard.desired_children(SHARD, spec_of(SHARD), None), "ConfigMap", "shard-00-mssql")["data"]
    assert "hadrenabled = 1" in config["mssql.conf"]
    sql = config["ag-primary.sql"]
    assert "CREATE ENDPOINT [hadr_endpoint]" in sql and "LISTENER_PORT = 5022" in sql
    assert "CREATE AVAILABILITY GROUP [shard-00]" in sql and "CLUSTER_TYPE = EXTERNAL" in sql
    assert "REQUIRED_SYNCHRONIZED_SECONDARIES_TO_COMMIT = 1" in sql
    assert sql.count("AVAILABILITY_MODE = SYNCHRONOUS_COMMIT") == 2  # primary + 1 synchronous
    assert sql.count("AVAILABILITY_MODE = ASYNCHRONOUS_COMMIT") == 1
    assert "tcp://shard-00-2.shard-00.lab.svc:5022" in sql
    assert "JOIN WITH (CLUSTER_TYPE = EXTERNAL)" in config["ag-secondary.sql"]


def test_only_unlabelled_pods_get_roles_and_pod_0_starts_as_primary():
    pods = [pod("shard-00-0"), pod("shard-00-1"), pod("shard-00-2", role="secondary")]
    spec = spec_of(SHARD)
    assert shard.role_assignments("shard-00", spec, pods, None) == {"shard-00-0": "primary", "shard-00-1": "secondary"}
    labelled = [pod("shard-00-0", "secondary"), pod("shard-00-1", "primary"), pod("shard-00-2")]
    assert shard.role_assignments("shard-00", spec, labelled, None) == {"shard-00-2": "secondary"}
    asked = copy.deepcopy(SHARD)
    asked["spec"]["primary"] = "shard-00-1"
    assert shard.role_assignments("shard-00", spec_of(asked), [pod("shard-00-0"), pod("shard-00-1")],
                                  None)["shard-00-1"] == "primary"
    assert shard.role_assignments("shard-00", spec, [pod("shard-00-0"), pod("shard-00-1")],
                                  "shard-00-1")["shard-00-1"] == "primary", "the recorded primary first"


def test_status_reports_replicas_and_says_the_ag_is_not_bootstrapped():
    pods = [pod("shard-00-0", "primary"), pod("shard-00-1", "secondary"), pod("shard-00-2", "secondary")]
    status, conditions = shard_status.shard_status(SHARD, spec_of(SHARD), {"status": {}}, pods)
    assert status.ready_replicas == 3 and status.current_primary == status.target_primary == "shard-00-0"
    assert status.replicas[1].to_k8s() == {"pod": "shard-00-1", "role": "secondary", "ready": True}
    ready = conditions[0]
    assert (ready.type, ready.status, ready.reason) == ("Ready", False, "AvailabilityGroupNotBootstrapped")
    assert status.phase == "Bootstrapping" and "not bootstrapped yet" in ready.message
    assert "password" not in repr(status.to_k8s()).lower().replace("credentialssecretname", "")


def test_unbound_volumes_show_as_pending_and_degraded():
    pods = [pod("shard-00-0", "primary", ready=False, phase="Pending",
                unschedulable='pod has unbound immediate PersistentVolumeClaims')]
    status, conditions = shard_status.shard_status(SHARD, spec_of(SHARD), {"status": {}}, pods)
    kinds = {c.type: c for c in conditions}
    assert status.phase == "Pending" and status.ready_replicas == 0
    assert kinds["Degraded"].status and kinds["Degraded"].reason == "PodsUnschedulable"
    assert "PersistentVolumeClaims" in kinds["Ready"].message
    assert kinds["Progressing"].status


def test_spec_primary_is_the_target_and_shows_as_progressing():
    asked = copy.deepcopy(SHARD)
    asked["spec"]["primary"] = "shard-00-2"
    pods = [pod(f"shard-00-{i}", "primary" if i == 0 else "secondary") for i in range(3)]
    status, conditions = shard_status.shard_status(asked, spec_of(asked), {"status": {}}, pods)
    assert (status.current_primary, status.target_primary) == ("shard-00-0", "shard-00-2")
    assert next(c for c in conditions if c.type == "Progressing").reason == "PrimaryChangePending"


def test_a_lost_generated_secret_is_reported_not_reinvented():
    body = sample("Shard", "shard-00")
    _, conditions = shard_status.shard_status(body, spec_of(body), {"status": {}}, [], credentials_missing=True)
    degraded = next(c for c in conditions if c.type == "Degraded")
    assert degraded.status and degraded.reason == "CredentialsSecretMissing"
    assert "restore the Secret" in degraded.message and "shard-00-credentials" in degraded.message
    body["spec"]["credentialsSecretRef"] = {"name": "sql-sa"}
    _, conditions = shard_status.shard_status(body, spec_of(body), None, [], credentials_missing=True)
    degraded = next(c for c in conditions if c.type == "Degraded")
    assert "sql-sa named by spec.credentialsSecretRef does not exist" in degraded.message

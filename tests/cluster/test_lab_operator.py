"""The operator running against the real control plane: the sample Lab's services come up with
owned children while the Lab says its Shards are not Ready (SQL Server on kwok nodes never
bootstraps); edits, deletions, a hand-deleted child and a killed operator all converge;
Shards get their children and a password that appears nowhere; SLOs get PrometheusRules."""

from __future__ import annotations

import base64
import json
import signal
import urllib.request
from pathlib import Path

import pytest
import yaml

from operator_process import operator_process
from pimlab.waiting import wait_for

ROOT = Path(__file__).resolve().parents[2]
COMPONENTS = ("gateway", "patient", "encounter", "billing", "admin", "outbox-relay",
              "projection-worker")


def sample_docs(kind: str, namespace: str) -> list[dict]:
    docs = []
    for path in sorted((ROOT / "samples").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == kind:
                doc["metadata"]["namespace"] = namespace
                docs.append(doc)
    return docs


@pytest.fixture(scope="module")
def operator(cluster, crds_installed, tmp_path_factory):
    with operator_process(cluster, tmp_path_factory, "lab-e2e") as process:
        yield process


def lab_condition(cluster, namespace: str, name: str, ctype: str = "Ready") -> dict | None:
    lab = cluster.get("lab", name, namespace)
    for condition in (lab or {}).get("status", {}).get("conditions", []):
        if condition["type"] == ctype:
            return condition
    return None


def serving(cluster, namespace: str, name: str) -> bool:
    """Everything the Lab runs itself is up and its shard map complete: only its Shards (SQL
    Server pods on kwok nodes, never bootstrapped) keep it from Ready."""
    return (lab_condition(cluster, namespace, name) or {}).get("reason") == "ShardsNotReady"


def children(cluster, namespace: str, kind: str, lab: str) -> list[dict]:
    out = cluster.kubectl("get", kind, "-n", namespace, "-l", f"pim-sre.lab/lab={lab}",
                          "-o", "json").stdout
    return json.loads(out)["items"]


@pytest.fixture(scope="module")
def sample_lab(cluster, operator):
    ns = operator.namespace
    cluster.apply(sample_docs("Shard", ns) + sample_docs("Lab", ns))
    wait_for(lambda: serving(cluster, ns, "pim"), timeout=120, what="the sample Lab's services to be up")
    return ns


def test_sample_lab_runs_its_children_and_is_not_ready_without_its_shards(cluster, sample_lab):
    ns = sample_lab
    lab = cluster.get("lab", "pim", ns)
    status = lab["status"]
    assert status["observedGeneration"] == lab["metadata"]["generation"]
    assert status["readyServices"] == status["totalServices"] == 7
    assert status["shards"] == ["shard-00", "shard-01", "shard-02"]
    assert status["phase"] == "Pending"
    assert status["endpoints"]["gateway"] == f"http://pim-gateway.{ns}.svc"
    kinds = {c["type"]: c for c in status["conditions"]}
    assert kinds["Degraded"]["status"] == "False" and kinds["Progressing"]["status"] == "False"
    assert kinds["Ready"]["status"] == kinds["ShardsReady"]["status"] == "False"
    assert kinds["ShardsReady"]["message"].startswith("3/3 shards not Ready: shard-00 (")

    deployments = children(cluster, ns, "deployments", "pim")
    assert sorted(d["metadata"]["name"] for d in deployments) == sorted(f"pim-{c}" for c in COMPONENTS)
    for kind in ("deployments", "services", "poddisruptionbudgets", "configmaps"):
        for child in children(cluster, ns, kind, "pim"):
            (owner,) = child["metadata"]["ownerReferences"]
            assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == \
                ("Lab", "pim", lab["metadata"]["uid"], True)
    autoscaled = {f"pim-{name}" for name, service in sample_docs("Lab", ns)[0]["spec"]["services"].items()
                  if service.get("autoscaling")}
    hpas = children(cluster, ns, "horizontalpodautoscalers", "pim")
    assert autoscaled and {h["metadata"]["name"] for h in hpas} == autoscaled
    gateway = json.loads(cluster.kubectl("get", "deployment", "pim-gateway", "-n", ns, "-o", "json",
                                         "--show-managed-fields").stdout)
    ours = [m for m in gateway["metadata"]["managedFields"] if m["manager"] == "pimlab-operator"]
    assert len(ours) == 1 and ours[0]["operation"] == "Apply"
    assert "f:replicas" not in ours[0]["fieldsV1"]["f:spec"], \
        "an autoscaled Deployment's replicas belong to its HPA, not to the operator"
    shard_map = json.loads(cluster.get("configmap", "pim-shard-map", ns)["data"]["shard-map.json"])
    assert shard_map["version"] == 1 and shard_map["slotCount"] == 1024
    assert [s["slots"] for s in shard_map["shards"]] == [
        {"start": 0, "end": 341}, {"start": 342, "end": 682}, {"start": 683, "end": 1023}]
    assert shard_map["shards"][0]["primary"] == {"host": f"shard-00-primary.{ns}.svc", "port": 1433}
    header, row = cluster.kubectl("get", "lab", "pim", "-n", ns).stdout.splitlines()[:2]
    assert "SHARDS READY" in header and "Pending" in row and "True" not in row
    events = cluster.kubectl("get", "events", "-n", ns, "--field-selector",
                             "involvedObject.kind=Lab", "-o", "json").stdout
    assert any(e["reason"] == "ShardsNotReady" for e in json.loads(events)["items"])


def test_editing_the_spec_updates_the_children(cluster, sample_lab):
    ns = sample_lab
    cluster.kubectl("patch", "lab", "pim", "-n", ns, "--type=merge", "-p",
                    json.dumps({"spec": {"services": {"billing": {"replicas": 3}},
                                         "image": "ghcr.io/pim-sre/lab:0.1.1"}}))
    deployment = wait_for(
        lambda: (d := cluster.get("deployment", "pim-billing", ns)) and d["spec"]["replicas"] == 3 and d,
        what="billing to scale to 3")
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == "ghcr.io/pim-sre/lab:0.1.1"
    lab = wait_for(lambda: (l := cluster.get("lab", "pim", ns))["status"].get("observedGeneration")
                   == l["metadata"]["generation"] and l, what="observedGeneration to catch up")
    wait_for(lambda: serving(cluster, ns, "pim"), what="the services up again after the rollout")
    billing = next(s for s in cluster.get("lab", "pim", ns)["status"]["services"] if s["name"] == "billing")
    assert billing["replicas"] == 3 and lab["metadata"]["generation"] >= 2


def test_a_child_deleted_by_hand_comes_back(cluster, sample_lab):
    ns = sample_lab
    before = cluster.get("service", "pim-patient", ns)["metadata"]["uid"]
    cluster.kubectl("delete", "service", "pim-patient", "-n", ns)
    again = wait_for(lambda: cluster.get("service", "pim-patient", ns), timeout=60,
                     what="the Service to be recreated")
    assert again["metadata"]["uid"] != before


def test_a_new_shard_moves_the_shard_map_version(cluster, sample_lab):
    ns = sample_lab
    cluster.kubectl("patch", "shard", "shard-02", "-n", ns, "--type=merge", "-p",
                    json.dumps({"spec": {"slots": {"start": 683, "end": 1000}}}))
    wait_for(lambda: (lab_condition(cluster, ns, "pim", "Degraded") or {}).get("reason")
             == "ShardSlotsUncovered", what="the uncovered slots to be reported")
    shard_map = json.loads(cluster.get("configmap", "pim-shard-map", ns)["data"]["shard-map.json"])
    assert shard_map["version"] == 2
    cluster.kubectl("patch", "shard", "shard-02", "-n", ns, "--type=merge", "-p",
                    json.dumps({"spec": {"slots": {"start": 683, "end": 1023}}}))
    wait_for(lambda: serving(cluster, ns, "pim"), what="the slots uncovered no more")
    assert cluster.get("lab", "pim", ns)["status"]["shardMapVersion"] == "3"


def test_operator_serves_health_and_metrics(operator, sample_lab):
    with urllib.request.urlopen(f"http://127.0.0.1:{operator.health_port}/healthz", timeout=5) as r:
        assert r.status == 200
    with urllib.request.urlopen(f"http://127.0.0.1:{operator.metrics_port}/metrics", timeout=5) as r:
        metrics = r.read().decode()
    assert 'pimlab_operator_reconciles_total{kind="Lab"' in metrics
    assert 'pimlab_operator_reconcile_duration_seconds_bucket{kind="Lab"' in metrics
    log_line = json.loads(Path(operator.log).read_text().splitlines()[-1])
    assert {"message", "timestamp", "severity"} <= set(log_line)


def test_killing_the_operator_mid_reconcile_converges_without_duplicates(cluster, operator):
    ns = operator.namespace
    lab = sample_docs("Lab", ns)[0]
    lab["metadata"]["name"] = "killed"
    cluster.apply(lab)
    wait_for(lambda: children(cluster, ns, "deployments", "killed"), timeout=60, interval=0.05,
             what="the first child of the new Lab")
    operator.stop(sig=signal.SIGKILL, grace=0)
    partial = len(children(cluster, ns, "deployments", "killed"))
    operator.start()
    wait_for(lambda: serving(cluster, ns, "killed"), timeout=120, what="the Lab to converge after the restart")
    deployments = children(cluster, ns, "deployments", "killed")
    assert sorted(d["metadata"]["name"] for d in deployments) == sorted(f"killed-{c}" for c in COMPONENTS)
    assert partial <= len(COMPONENTS)
    for kind in ("services", "poddisruptionbudgets"):
        names = [c["metadata"]["name"] for c in children(cluster, ns, kind, "killed")]
        assert len(names) == len(set(names)) == len(COMPONENTS)
    for deployment in deployments:
        rs = json.loads(cluster.kubectl("get", "rs", "-n", ns, "-l",
                                        f"app.kubernetes.io/instance=killed,app.kubernetes.io/component="
                                        f"{deployment['metadata']['labels']['app.kubernetes.io/component']}",
                                        "-o", "json").stdout)["items"]
        assert len(rs) == 1, "a restart must not roll the pods (same template, same ReplicaSet)"


def test_status_is_true_again_after_an_operator_restart(cluster, operator, sample_lab):
    ns = sample_lab
    operator.stop()
    cluster.kubectl("delete", "deployment", "pim-admin", "-n", ns)
    wait_for(lambda: cluster.get("deployment", "pim-admin", ns) is None, what="deletion")
    operator.start()
    wait_for(lambda: cluster.get("deployment", "pim-admin", ns), timeout=120,
             what="the resumed operator to recreate it")
    wait_for(lambda: serving(cluster, ns, "pim"), timeout=120, what="the services up after the restart")


def test_shard_children_and_a_password_that_appears_nowhere(cluster, operator, sample_lab):
    ns = sample_lab
    secret = wait_for(lambda: cluster.get("secret", "shard-00-credentials", ns), what="the generated Secret")
    password = base64.b64decode(secret["data"]["password"]).decode()
    assert base64.b64decode(secret["data"]["username"]).decode() == "sa" and len(password) >= 16
    shard = cluster.get("shard", "shard-00", ns)
    (owner,) = secret["metadata"]["ownerReferences"]
    assert owner["uid"] == shard["metadata"]["uid"]
    sts = wait_for(lambda: cluster.get("statefulset", "shard-00", ns), what="the StatefulSet")
    assert sts["spec"]["replicas"] == 3
    for service in ("shard-00", "shard-00-primary", "shard-00-readonly"):
        assert cluster.get("service", service, ns)["metadata"]["ownerReferences"][0]["uid"] == shard["metadata"]["uid"]
    shard = wait_for(lambda: (s := cluster.get("shard", "shard-00", ns)).get("status", {}).get("conditions") and s,
                     what="the Shard's status")
    assert shard["status"]["observedGeneration"] == shard["metadata"]["generation"]
    ready = next(c for c in shard["status"]["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "False", "no Shard is Ready before its availability group exists"
    everywhere = "\n".join([
        Path(operator.log).read_text(),
        cluster.kubectl("get", "shard", "-n", ns, "-o", "yaml").stdout,
        cluster.kubectl("get", "events", "-n", ns, "-o", "yaml").stdout,
        cluster.kubectl("get", "configmaps", "-n", ns, "-o", "yaml").stdout,
    ])
    assert password not in everywhere, "the generated SA password leaked"


def test_a_deleted_generated_secret_is_reported_not_reinvented(cluster, operator, sample_lab):
    ns = sample_lab
    wait_for(lambda: cluster.get("statefulset", "shard-01", ns), what="shard-01's StatefulSet")
    cluster.kubectl("delete", "secret", "shard-01-credentials", "-n", ns)

    def degraded_reason():
        shard = cluster.get("shard", "shard-01", ns)
        return next((c["reason"] for c in shard["status"]["conditions"] if c["type"] == "Degraded"), None)

    wait_for(lambda: degraded_reason() == "CredentialsSecretMissing", timeout=90,
             what="the Shard to report its missing Secret")
    assert cluster.get("secret", "shard-01-credentials", ns) is None, \
        "a new password would lock everyone out of a SQL Server initialised with the old one"


def test_a_postgres_shard_gets_the_instance_manager_and_says_why_it_waits(cluster, operator):
    """engine: postgres on kwok: the children are real, the pods never run (no volume is bound),
    so the failover manager has nobody to ask and says so; it never sends a packet to kwok pods."""
    ns = operator.namespace
    cluster.apply({"apiVersion": "pim-sre.lab/v1alpha1", "kind": "Shard",
                   "metadata": {"name": "pg-07", "namespace": ns},
                   "spec": {"engine": "postgres", "ordinal": 7, "slots": {"start": 0, "end": 9},
                            "storage": {"size": "1Gi"}, "failover": {"unhealthyAfterSeconds": 5}}})
    sts = wait_for(lambda: cluster.get("statefulset", "pg-07", ns), what="the postgres StatefulSet")
    container = sts["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["pimlab", "instance", "run"] and container["image"] == "ghcr.io/pim-sre/lab:0.1.0"
    secret = wait_for(lambda: cluster.get("secret", "pg-07-credentials", ns), what="the generated Secret")
    assert base64.b64decode(secret["data"]["username"]).decode() == "pim" and "manager-token" in secret["data"]
    password = base64.b64decode(secret["data"]["password"]).decode()

    def status():
        return ((cluster.get("shard", "pg-07", ns) or {}).get("status") or {})

    wait_for(lambda: status().get("engine") == "postgres" and status().get("phase") == "Pending", timeout=90,
             what="the postgres Shard's status")
    ready = next(c for c in status()["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "False" and ready["reason"] in ("InstancesUnreachable", "StatefulSetMissing")
    assert cluster.get("service", "pg-07-primary", ns)["spec"]["ports"][0]["port"] == 5432
    log = Path(operator.log).read_text()
    assert password not in log and password not in cluster.kubectl("get", "shard", "pg-07", "-n", ns, "-o", "yaml").stdout
    cluster.kubectl("delete", "shard", "pg-07", "-n", ns)


def test_a_changed_pod_template_replaces_shard_pods_that_never_ran(cluster, operator):
    """The StatefulSet is OnDelete, so the operator replaces the pods (shard/rollout.py). On kwok
    the shard's pods never run (no volume is bound): a pod where nothing answers is restarted at
    once, one per pass, so a bad template is fixed by the next one instead of stalling the rollout.
    Restarting live standbys in turn and the switchover are proven on the real node."""
    ns = operator.namespace
    cluster.apply({"apiVersion": "pim-sre.lab/v1alpha1", "kind": "Shard",
                   "metadata": {"name": "pg-08", "namespace": ns},
                   "spec": {"engine": "postgres", "ordinal": 8, "slots": {"start": 10, "end": 19},
                            "storage": {"size": "1Gi"}}})

    def pods() -> list[dict]:
        items = json.loads(cluster.kubectl("get", "pods", "-n", ns, "-l", "app.kubernetes.io/instance=pg-08",
                                           "-o", "json").stdout)["items"]
        return [p for p in items if p["metadata"]["name"].startswith("pg-08-")]

    def rolling() -> dict:
        return ((cluster.get("shard", "pg-08", ns) or {}).get("status") or {}).get("rollingUpdate") or {}

    sts = wait_for(lambda: (s := cluster.get("statefulset", "pg-08", ns)) and len(pods()) == 3
                   and (r := rolling()).get("reason") == "UpToDate"
                   and r["revision"] == (s.get("status") or {}).get("updateRevision")
                   and s, timeout=90, what="three pods and the rollout's status up to date")
    assert sts["spec"]["updateStrategy"] == {"type": "OnDelete"}
    first = {p["metadata"]["name"]: p["metadata"]["uid"] for p in pods()}
    cluster.kubectl("patch", "shard", "pg-08", "-n", ns, "--type=merge", "-p",
                    json.dumps({"spec": {"resources": {"requests": {"cpu": "10m", "memory": "64Mi"}}}}))
    revision = wait_for(lambda: (r := cluster.get("statefulset", "pg-08", ns)["status"].get("updateRevision"))
                        != sts["status"]["updateRevision"] and r, what="the new revision")
    wait_for(lambda: (now := pods()) and len(now) == 3
             and all(p["metadata"]["labels"]["controller-revision-hash"] == revision for p in now)
             and (r := rolling()).get("reason") == "UpToDate" and r.get("revision") == revision,
             timeout=120, what="every pod on the new revision")
    now = pods()
    assert all(p["metadata"]["uid"] != first[p["metadata"]["name"]] for p in now)
    assert all(p["spec"]["containers"][0]["resources"]["requests"]["memory"] == "64Mi" for p in now)
    events = json.loads(cluster.kubectl("get", "events", "-n", ns, "-o", "json").stdout)["items"]
    said = [(e["reason"], e["message"]) for e in events if e["involvedObject"]["name"] == "pg-08"
            and e["reason"].startswith("RollingUpdate")]
    restarts = sorted(m for r, m in said if r == "RollingUpdate")
    assert restarts == sorted(f"restarting standby pg-08-{2 - k} on revision {revision} (nothing answers in it); "
                              f"{k}/3 updated" for k in range(3)), said
    assert ("RollingUpdateCompleted", f"every pod runs revision {revision}") in said, said
    cluster.kubectl("delete", "shard", "pg-08", "-n", ns)


def test_slo_becomes_a_prometheus_rule_where_the_crd_exists(cluster, operator, thirdparty_crds):
    ns = operator.namespace
    slo = next(d for d in sample_docs("SLO", ns) if d["metadata"]["name"] == "encounter-booking-availability")
    cluster.apply(slo)
    rule = wait_for(lambda: cluster.get("prometheusrule", "encounter-booking-availability", ns),
                    what="the PrometheusRule")
    alerts = [r for g in rule["spec"]["groups"] for r in g["rules"] if "alert" in r]
    assert {a["labels"]["severity"] for a in alerts} >= {"page", "ticket"}
    status = wait_for(lambda: (o := cluster.get("slo", "encounter-booking-availability", ns))
                      .get("status", {}).get("generatedObjects") and o["status"], what="SLO status")
    assert any(g["kind"] == "PrometheusRule" for g in status["generatedObjects"])


def test_a_real_pod_kill_is_injected_once_and_recovery_is_measured(cluster, operator, sample_lab):
    ns = sample_lab
    selector = "app.kubernetes.io/instance=pim,app.kubernetes.io/component=patient"
    before = {p["metadata"]["name"] for p in json.loads(cluster.kubectl(
        "get", "pods", "-n", ns, "-l", selector, "-o", "json").stdout)["items"]}
    drill = next(d for d in sample_docs("ChaosExperiment", ns) if d["metadata"]["name"] == "pod-kill")
    drill["metadata"]["name"] = "pod-kill-for-real"
    drill["spec"]["dryRun"] = False
    drill["spec"].pop("abortIf")  # no Prometheus here: an SLO that cannot be read aborts a real run
    cluster.kubectl("label", "namespace", ns, "pim-sre.lab/chaos=enabled", "--overwrite")
    cluster.apply(drill)
    status = wait_for(lambda: (c := cluster.get("chaosexperiment", "pod-kill-for-real", ns))
                      .get("status", {}).get("verdict") in ("Passed", "Failed") and c["status"],
                      timeout=120, what="the drill's verdict")
    assert status["verdict"] == "Passed" and status["recoverySeconds"] >= 0
    (killed,) = status["plannedTargets"]
    assert killed in before
    events = [entry["event"] for entry in status["timeline"]]
    assert events.count("Injected") == 1 and "Recovered" in events
    after = {p["metadata"]["name"] for p in json.loads(cluster.kubectl(
        "get", "pods", "-n", ns, "-l", selector, "-o", "json").stdout)["items"]}
    assert killed not in after and len(after) == len(before)


def test_deleting_the_lab_removes_its_children(cluster, operator, sample_lab):
    ns = sample_lab
    cluster.kubectl("delete", "lab", "pim", "-n", ns, "--timeout=60s")
    wait_for(lambda: not children(cluster, ns, "deployments", "pim")
             and not children(cluster, ns, "configmaps", "pim"),
             timeout=90, what="the garbage collector to remove the Lab's children")

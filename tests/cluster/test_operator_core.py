"""The operator core on the real control plane: children that leave the desired set are pruned
(and nothing it does not own), a stored spec that no longer validates is reported without
touching the children, and status writes never overwrite a newer status."""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import pytest
import yaml

from operator_process import operator_process
from pimlab.waiting import wait_for
from pimlab_operator import conditions, kube, reconcile
from pimlab_operator.shard.model import ShardStatus

ROOT = Path(__file__).resolve().parents[2]


def sample(kind: str, name: str, namespace: str) -> dict:
    for path in sorted((ROOT / "samples").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc["kind"] == kind and doc["metadata"]["name"] == name:
                doc["metadata"]["namespace"] = namespace
                return doc
    raise LookupError(f"{kind}/{name} is not in samples/")


@pytest.fixture(scope="module")
def operator(cluster, crds_installed, thirdparty_crds, tmp_path_factory):
    """With the prometheus-operator CRDs installed, so ServiceMonitors and PrometheusRules are made."""
    with operator_process(cluster, tmp_path_factory, "core") as process:
        yield process


def condition(obj: dict | None, ctype: str = "Ready") -> dict:
    return next((c for c in ((obj or {}).get("status") or {}).get("conditions") or []
                 if c["type"] == ctype), {})


def patch(cluster, kind: str, name: str, namespace: str, spec: dict) -> None:
    cluster.kubectl("patch", kind, name, "-n", namespace, "--type=merge", "-p", json.dumps({"spec": spec}))


def observed(cluster, kind: str, name: str, namespace: str) -> dict:
    """The object once the operator has acted on its current generation."""
    return wait_for(lambda: (o := cluster.get(kind, name, namespace))
                    and (o.get("status") or {}).get("observedGeneration") == o["metadata"]["generation"]
                    and o, timeout=60, what=f"{kind}/{name} to be reconciled")


@pytest.fixture(scope="module")
def lab(cluster, operator):
    ns = operator.namespace
    cluster.apply([sample("Shard", f"shard-0{i}", ns) for i in range(3)] + [sample("Lab", "pim", ns)])
    # SQL Server Shards on kwok nodes never bootstrap: the Lab's own part is up when only they
    # keep it from Ready
    wait_for(lambda: condition(cluster.get("lab", "pim", ns)).get("reason") == "ShardsNotReady",
             timeout=120, what="the sample Lab's services to be up")
    return ns


def test_an_hpa_is_pruned_when_autoscaling_is_unset(cluster, lab):
    assert cluster.get("hpa", "pim-gateway", lab), "the sample autoscales the gateway"
    patch(cluster, "lab", "pim", lab, {"services": {"gateway": {"autoscaling": None, "replicas": 2}}})
    wait_for(lambda: cluster.get("hpa", "pim-gateway", lab) is None, timeout=60,
             what="the gateway's HPA to be pruned")
    deployment = wait_for(lambda: (d := cluster.get("deployment", "pim-gateway", lab))
                          and d["spec"].get("replicas") == 2 and d, what="fixed replicas")
    assert deployment["metadata"]["ownerReferences"][0]["kind"] == "Lab"


def test_a_service_monitor_is_pruned_when_switched_off(cluster, lab):
    wait_for(lambda: cluster.get("servicemonitor", "pim", lab), what="the Lab's ServiceMonitor")
    patch(cluster, "lab", "pim", lab, {"observability": {"serviceMonitor": False}})
    wait_for(lambda: cluster.get("servicemonitor", "pim", lab) is None, timeout=60,
             what="the ServiceMonitor to be pruned")
    patch(cluster, "lab", "pim", lab, {"observability": {"serviceMonitor": True}})
    wait_for(lambda: cluster.get("servicemonitor", "pim", lab), what="the ServiceMonitor to return")


def test_an_object_a_template_stops_rendering_is_pruned(cluster, operator):
    ns = operator.namespace
    slo = sample("SLO", "encounter-booking-availability", ns)
    cluster.apply(slo)
    dashboard = f"{slo['metadata']['name']}-dashboard"
    wait_for(lambda: cluster.get("configmap", dashboard, ns), what="the SLO's dashboard ConfigMap")
    patch(cluster, "slo", slo["metadata"]["name"], ns, {"grafana": {"dashboard": False}})
    wait_for(lambda: cluster.get("configmap", dashboard, ns) is None, timeout=60,
             what="the dashboard ConfigMap to be pruned")
    assert cluster.get("prometheusrule", slo["metadata"]["name"], ns), "the rest stays"


def test_an_edited_load_prunes_the_job_of_the_old_spec(cluster, lab):
    load = sample("PersonaLoad", "peak-clinic", lab)
    cluster.apply(load)
    first = wait_for(lambda: (o := cluster.get("personaload", "peak-clinic", lab))
                     and (o.get("status") or {}).get("jobName"), what="the first run's Job")
    patch(cluster, "personaload", "peak-clinic", lab, {"profile": {"rate": load["spec"]["profile"]["rate"] + 1}})
    second = wait_for(lambda: (j := (cluster.get("personaload", "peak-clinic", lab)["status"]).get("jobName"))
                      != first and j, what="a new run's Job")
    wait_for(lambda: cluster.get("job", first, lab) is None, timeout=60, what="the old Job to be pruned")
    assert cluster.get("job", second, lab)


def test_an_unowned_object_with_the_same_labels_survives(cluster, lab):
    lab_obj = cluster.get("lab", "pim", lab)
    labels = {"app.kubernetes.io/managed-by": "pimlab-operator", "pim-sre.lab/lab": "pim"}
    stranger = {"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "not-the-operators", "namespace": lab, "labels": labels},
                "data": {"owner": "someone else"}}
    cluster.apply({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "another-owner", "namespace": lab}})
    other_owner = cluster.get("configmap", "another-owner", lab)
    adopted_elsewhere = copy.deepcopy(stranger)
    adopted_elsewhere["metadata"]["name"] = "owned-by-another-lab"
    adopted_elsewhere["metadata"]["ownerReferences"] = [{
        "apiVersion": "v1", "kind": "ConfigMap", "name": "another-owner", "uid": other_owner["metadata"]["uid"]}]
    cluster.apply([stranger, adopted_elsewhere])
    patch(cluster, "lab", "pim", lab, {"services": {"admin": {"replicas": 2}}})
    observed(cluster, "lab", "pim", lab)
    wait_for(lambda: cluster.get("deployment", "pim-admin", lab)["spec"]["replicas"] == 2, what="the edit")
    time.sleep(2)  # a reconcile that prunes deletes in the same pass; give it a moment more anyway
    assert cluster.get("configmap", "not-the-operators", lab), "no owner: never the operator's to delete"
    assert cluster.get("configmap", "owned-by-another-lab", lab), "another owner: not this Lab's"
    assert cluster.get("configmap", "pim-shard-map", lab)["metadata"]["ownerReferences"][0]["uid"] == \
        lab_obj["metadata"]["uid"]


@pytest.fixture
def loosened_lab_crd(cluster, crds_installed):
    """The Lab CRD as an older release might have shipped it: without the CEL rule that keeps
    autoscaling.minReplicas <= maxReplicas. Restored right after the object is stored."""
    crd = json.loads(cluster.kubectl("get", "crd", "labs.pim-sre.lab", "-o", "json").stdout)
    autoscaling = (crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
                   ["properties"]["services"]["properties"]["gateway"]["properties"]["autoscaling"])
    restore = ["apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds" / "labs.pim-sre.lab.yaml")]
    path = "/spec/versions/0/schema/openAPIV3Schema/properties/spec/properties/services/properties/gateway/properties/autoscaling/x-kubernetes-validations"
    assert autoscaling.get("x-kubernetes-validations")
    cluster.kubectl("patch", "crd", "labs.pim-sre.lab", "--type=json", "-p",
                    json.dumps([{"op": "remove", "path": path}]))
    try:
        yield
    finally:
        cluster.kubectl(*restore)


def test_an_invalid_stored_spec_is_reported_and_changes_nothing(cluster, operator, loosened_lab_crd):
    ns = operator.namespace
    lab = sample("Lab", "pim", ns)
    lab["metadata"]["name"] = "upgraded"
    cluster.apply(lab)
    wait_for(lambda: cluster.get("hpa", "upgraded-gateway", ns), timeout=60, what="the Lab's children")
    before = {kind: cluster.get(kind, "upgraded-gateway", ns) for kind in ("deployment", "hpa")}
    patch(cluster, "lab", "upgraded", ns, {"services": {"gateway": {"autoscaling": {"minReplicas": 5, "maxReplicas": 2}}}})
    stored = cluster.get("lab", "upgraded", ns)
    assert stored["spec"]["services"]["gateway"]["autoscaling"]["minReplicas"] == 5, "the loosened CRD stored it"
    ready = wait_for(lambda: (c := condition(cluster.get("lab", "upgraded", ns))).get("reason") == "InvalidSpec"
                     and c, timeout=60, what="InvalidSpec")
    assert ready["status"] == "False"
    assert "spec.services.gateway.autoscaling" in ready["message"] and "maxReplicas" in ready["message"]
    assert ready["observedGeneration"] == cluster.get("lab", "upgraded", ns)["metadata"]["generation"]
    events = json.loads(cluster.kubectl("get", "events", "-n", ns, "--field-selector",
                                        "involvedObject.name=upgraded,reason=InvalidSpec", "-o", "json").stdout)
    assert [e["type"] for e in events["items"]] == ["Warning"]

    time.sleep(3)
    settled = cluster.get("lab", "upgraded", ns)["metadata"]["resourceVersion"]
    time.sleep(25)  # longer than the Lab's 20 s resync: a retry storm would rewrite status
    assert cluster.get("lab", "upgraded", ns)["metadata"]["resourceVersion"] == settled, "no retry storm"
    # Their status moves with the pods and the HPA sets the Deployment's replicas; what the
    # operator renders must not move.
    now = {kind: cluster.get(kind, "upgraded-gateway", ns) for kind in before}
    assert now["hpa"]["spec"] == before["hpa"]["spec"]
    assert now["deployment"]["spec"]["template"] == before["deployment"]["spec"]["template"]
    events = json.loads(cluster.kubectl("get", "events", "-n", ns, "--field-selector",
                                        "involvedObject.name=upgraded,reason=InvalidSpec", "-o", "json").stdout)
    assert sum(e.get("count", 1) for e in events["items"]) == 1

    patch(cluster, "lab", "upgraded", ns, {"services": {"gateway": {"autoscaling": {"minReplicas": 1, "maxReplicas": 3}}}})
    wait_for(lambda: cluster.get("hpa", "upgraded-gateway", ns)["spec"]["minReplicas"] == 1, timeout=60,
             what="a fixed spec to be acted on at once")
    wait_for(lambda: condition(cluster.get("lab", "upgraded", ns)).get("reason") != "InvalidSpec",
             what="InvalidSpec to clear")


def test_status_writes_never_overwrite_a_newer_status(cluster, crds_installed, namespace):
    cluster.apply(sample("Shard", "shard-00", namespace))  # no operator watches this namespace
    read = kube.get("pim-sre.lab/v1alpha1", "Shard", "shard-00", namespace)
    mine = reconcile.write_status(read, ShardStatus(phase="Pending", phase_reason="mine"),
                                  [conditions.Condition("Ready", False, "Waiting", "first")])
    first = condition(mine)
    assert first["observedGeneration"] == mine["status"]["observedGeneration"] == read["metadata"]["generation"]

    # Another writer (a second operator replica, say) writes after our read ...
    other = reconcile.write_status(mine, ShardStatus(phase="Bootstrapping", phase_reason="theirs"),
                                   [conditions.Condition("Ready", False, "StillWaiting", "second")])
    assert condition(other)["lastTransitionTime"] == first["lastTransitionTime"], "same status: no transition"
    # ... so a write decided from the older read is refused, and the newer status stands.
    with pytest.raises(kube.Conflict):
        reconcile.write_status(mine, ShardStatus(phase="Failed", phase_reason="stale"),
                               [conditions.Condition("Ready", True, "Stale", "stale")])
    stored = cluster.get("shard", "shard-00", namespace)["status"]
    assert stored["phaseReason"] == "theirs" and condition({"status": stored})["reason"] == "StillWaiting"

    # A condition another controller owns survives our writes (the list is a map keyed by type).
    cluster.kubectl("patch", "shard", "shard-00", "-n", namespace, "--subresource=status", "--type=json",
                    "-p", json.dumps([{"op": "add", "path": "/status/conditions/-", "value": {
                        "type": "Audited", "status": "True", "reason": "Checked", "message": "by a tool",
                        "lastTransitionTime": "2026-01-01T00:00:00Z"}}]))
    fresh = kube.get("pim-sre.lab/v1alpha1", "Shard", "shard-00", namespace)
    time.sleep(1.1)
    flipped = reconcile.write_status(fresh, ShardStatus(phase="Ready", phase_reason="ok"),
                                     [conditions.Condition("Ready", True, "Healthy", "third")])
    assert condition(flipped)["lastTransitionTime"] != first["lastTransitionTime"], "status changed: a transition"
    assert condition(flipped, "Audited")["reason"] == "Checked"

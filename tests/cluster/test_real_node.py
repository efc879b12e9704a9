"""The real node: pods of the project's image run for real (containerd, runc, CNI bridge,
kube-proxy, CoreDNS, local-path-provisioner), and `cluster down` leaves nothing behind.

Skipped, with the reason `cluster up` gave, where this machine cannot run containers (then the
cluster runs kwok nodes only, which test_node_fallback.py covers)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from pimlab.cluster import images, teardown
from pimlab.cluster.procs import listening
from pimlab.cluster.layout import (
    KWOK_NODE_TAINT, KWOK_NODES, NODE_NAME, REAL_NODE_NAMESPACE_ANNOTATIONS,
)
from pimlab.waiting import wait_for

IMAGE = images.PROJECT_IMAGE


@pytest.fixture(scope="module")
def real(cluster):
    if not cluster.plane.real_node:
        pytest.skip(f"no real node on this machine ({cluster.plane.node_mode()})")
    return cluster


@pytest.fixture
def real_ns(real):
    """A namespace whose pods all run on the real node (the namespace's annotations)."""
    name = f"r-{os.urandom(4).hex()}"
    real.apply({"apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": name, "annotations": REAL_NODE_NAMESPACE_ANNOTATIONS}})
    yield name
    real.kubectl("delete", "namespace", name, "--wait=false", check=False)


def pods(cluster, namespace: str, selector: str) -> list[dict]:
    out = cluster.kubectl("get", "pods", "-n", namespace, "-l", selector, "-o", "json").stdout
    return json.loads(out)["items"]


def ready(pod: dict) -> bool:
    conditions = {c["type"]: c["status"] for c in pod.get("status", {}).get("conditions", [])}
    return pod["status"].get("phase") == "Running" and conditions.get("Ready") == "True"


def ready_pods(cluster, namespace, selector, count=1, timeout=120):
    return wait_for(lambda: (lambda found: found if len(found) >= count else None)(
        [p for p in pods(cluster, namespace, selector) if ready(p) and
         not p["metadata"].get("deletionTimestamp")]),
        timeout=timeout, what=f"{count} ready pod(s) {selector} in {namespace}")


def service_deployment(name: str, replicas: int = 1) -> list[dict]:
    """The project's image serving every API router, as the Lab's services do, and its
    Service on port 80."""
    labels = {"app": name}
    return [
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
         "spec": {"replicas": replicas, "selector": {"matchLabels": labels},
                  "template": {"metadata": {"labels": labels}, "spec": {
                      "containers": [{
                          "name": "api", "image": IMAGE, "imagePullPolicy": "Never",
                          "args": ["serve", "--service", "all", "--host", "0.0.0.0",
                                   "--port", "8080"],
                          "env": [{"name": "PIM_DATA_DIR", "value": "/data"}],
                          "ports": [{"name": "http", "containerPort": 8080}],
                          "readinessProbe": {"httpGet": {"path": "/healthz", "port": "http"},
                                             "periodSeconds": 2},
                          "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                      }],
                      "volumes": [{"name": "data", "emptyDir": {}}],
                  }}}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
         "spec": {"selector": labels, "ports": [{"name": "http", "port": 80,
                                                 "targetPort": "http"}]}},
    ]


def sleeper(name: str, extra: dict | None = None) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"app": name}},
            "spec": {"terminationGracePeriodSeconds": 1, "containers": [{
                "name": "main", "image": IMAGE, "imagePullPolicy": "Never",
                "command": ["sleep", "infinity"], **(extra or {})}]}}


def fetch_from_pod(cluster, namespace: str, pod: str, url: str) -> str:
    code = ("import sys, urllib.request; r = urllib.request.urlopen(sys.argv[1], timeout=5); "
            "print(r.status, r.read().decode())")
    return cluster.kubectl("exec", "-n", namespace, pod, "--", "python3", "-c", code, url).stdout


def test_the_real_node_is_ready_with_its_bridge_address_and_taint(real):
    node = json.loads(real.kubectl("get", "node", NODE_NAME, "-o", "json").stdout)
    conditions = {c["type"]: c["status"] for c in node["status"]["conditions"]}
    assert conditions["Ready"] == "True"
    assert {"type": "InternalIP", "address": "10.244.0.1"} in node["status"]["addresses"]
    assert any(t["key"] == "pimlab.lab/real-node" for t in node["spec"]["taints"])
    assert node["status"]["nodeInfo"]["containerRuntimeVersion"].startswith("containerd://")


def test_pods_land_on_the_real_node_only_from_an_annotated_namespace(real, real_ns, namespace):
    real.apply(sleeper("here"), "-n", real_ns)
    real.apply(sleeper("there"), "-n", namespace)
    here = ready_pods(real, real_ns, "app=here")[0]
    assert here["spec"]["nodeName"] == NODE_NAME
    there = wait_for(lambda: next((p for p in pods(real, namespace, "app=there")
                                   if p["spec"].get("nodeName")), None), what="there scheduled")
    assert there["spec"]["nodeName"] in KWOK_NODES


def test_beside_the_real_node_the_kwok_nodes_carry_kwoks_noschedule_taint(real):
    for name in KWOK_NODES:
        node = json.loads(real.kubectl("get", "node", name, "-o", "json").stdout)
        assert KWOK_NODE_TAINT in node["spec"].get("taints", []), (name, node["spec"])


@pytest.fixture
def plain_ns(real):
    """A namespace as a user makes one: no annotation places its pods anywhere."""
    name = f"p-{os.urandom(4).hex()}"
    real.kubectl("create", "namespace", name)
    yield name
    real.kubectl("delete", "namespace", name, "--wait=false", check=False)


def test_a_plain_pod_never_lands_on_a_kwok_node(real, plain_ns):
    """A user's pod in a fresh namespace runs for real on the real node, or stays Pending with
    the scheduler's reason; it is never "Running" on a kwok node where nothing runs."""
    real.apply(sleeper("probe"), "-n", plain_ns)

    def decided() -> dict | None:
        pod = json.loads(real.kubectl("get", "pod", "probe", "-n", plain_ns, "-o", "json").stdout)
        scheduled = next((c for c in pod["status"].get("conditions", []) if c["type"] == "PodScheduled"), {})
        return pod if pod["spec"].get("nodeName") or scheduled.get("reason") == "Unschedulable" else None

    pod = wait_for(decided, timeout=60, what="the scheduler to place or refuse the plain pod")
    if pod["spec"].get("nodeName"):
        assert pod["spec"]["nodeName"] == NODE_NAME, pod["spec"]["nodeName"]
    else:
        scheduled = next(c for c in pod["status"]["conditions"] if c["type"] == "PodScheduled")
        assert pod["status"]["phase"] == "Pending"
        assert "taint" in scheduled["message"], scheduled
        time.sleep(5)  # and it stays so
        again = json.loads(real.kubectl("get", "pod", "probe", "-n", plain_ns, "-o", "json").stdout)
        assert not again["spec"].get("nodeName"), again["spec"]["nodeName"]


def test_a_deployment_answers_healthz_through_its_service_dns_name(real, real_ns):
    real.apply(service_deployment("api"), "-n", real_ns)
    real.apply(sleeper("client"), "-n", real_ns)
    ready_pods(real, real_ns, "app=api")
    ready_pods(real, real_ns, "app=client")
    url = f"http://api.{real_ns}.svc.cluster.local/healthz"
    answer = wait_for(lambda: _try(lambda: fetch_from_pod(real, real_ns, "client", url)),
                      timeout=60, what=f"{url} from another pod")
    assert answer.startswith("200 "), answer
    # and the service's JSON log shows up in `kubectl logs`
    logs = real.kubectl("logs", "-n", real_ns, "deployment/api").stdout
    records = [json.loads(line) for line in logs.splitlines() if line.startswith("{")]
    assert records, logs
    assert all({"ts", "level", "message"} <= set(r) for r in records)


def _try(call):
    try:
        return call()
    except AssertionError:
        return None


def test_exec_and_port_forward_reach_a_pod(real, real_ns):
    real.apply(service_deployment("pf"), "-n", real_ns)
    pod = ready_pods(real, real_ns, "app=pf")[0]["metadata"]["name"]
    assert real.kubectl("exec", "-n", real_ns, pod, "--", "id", "-u").stdout.strip() == "10001"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    forward = subprocess.Popen(
        [str(real.bin_dir / "kubectl"), f"--kubeconfig={real.kubeconfig}", "port-forward",
         "-n", real_ns, f"pod/{pod}", f"{port}:8080"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        def get():
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=3) as r:
                    return r.status
            except OSError:
                return None
        assert wait_for(get, timeout=30, what="the port-forward") == 200
    finally:
        forward.terminate()
        forward.wait(10)


def _container_pid(cluster, namespace: str, pod: str) -> int:
    """The host pid of the pod's first container, from containerd."""
    obj = json.loads(cluster.kubectl("get", "pod", pod, "-n", namespace, "-o", "json").stdout)
    container_id = obj["status"]["containerStatuses"][0]["containerID"].split("://")[1]
    out = subprocess.run(
        ["ctr", "--address", str(cluster.plane.layout.containerd_socket), "-n", "k8s.io",
         "tasks", "ls"], capture_output=True, text=True, check=True).stdout
    for line in out.splitlines()[1:]:
        task, pid, _ = line.split()
        if task == container_id:
            return int(pid)
    raise AssertionError(f"no task {container_id} in containerd:\n{out}")


def test_a_killed_container_is_restarted_and_a_deleted_pod_replaced(real, real_ns):
    real.apply(service_deployment("phoenix"), "-n", real_ns)
    pod = ready_pods(real, real_ns, "app=phoenix")[0]
    name = pod["metadata"]["name"]
    os.kill(_container_pid(real, real_ns, name), signal.SIGKILL)
    restarted = wait_for(
        lambda: next((p for p in pods(real, real_ns, "app=phoenix") if ready(p) and
                      p["status"]["containerStatuses"][0]["restartCount"] >= 1), None),
        timeout=120, what="kubelet to restart the killed container")
    assert restarted["metadata"]["name"] == name
    real.kubectl("delete", "pod", name, "-n", real_ns, "--wait=false")
    replaced = wait_for(
        lambda: next((p for p in pods(real, real_ns, "app=phoenix") if ready(p) and
                      p["metadata"]["name"] != name), None),
        timeout=120, what="a replacement pod")
    assert replaced["spec"]["nodeName"] == NODE_NAME


def test_a_pvc_backed_statefulset_keeps_its_data_across_pod_deletion(real, real_ns):
    labels = {"app": "store"}
    real.apply({
        "apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "store"},
        "spec": {"serviceName": "store", "replicas": 1, "selector": {"matchLabels": labels},
                 "template": {"metadata": {"labels": labels}, "spec": {
                     "terminationGracePeriodSeconds": 1,
                     "containers": [{"name": "main", "image": IMAGE, "imagePullPolicy": "Never",
                                     "command": ["sleep", "infinity"],
                                     "volumeMounts": [{"name": "data", "mountPath": "/data"}]}]}},
                 "volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": {
                     "accessModes": ["ReadWriteOnce"],
                     "resources": {"requests": {"storage": "64Mi"}}}}]},
    }, "-n", real_ns)
    first = ready_pods(real, real_ns, "app=store", timeout=180)[0]
    pvc = json.loads(real.kubectl("get", "pvc", "data-store-0", "-n", real_ns, "-o", "json").stdout)
    assert pvc["status"]["phase"] == "Bound"
    assert pvc["spec"]["storageClassName"] == "standard"
    real.kubectl("exec", "-n", real_ns, "store-0", "--", "sh", "-c", "echo kept > /data/proof")
    real.kubectl("delete", "pod", "store-0", "-n", real_ns, "--wait=true")
    second = wait_for(lambda: next((p for p in pods(real, real_ns, "app=store") if ready(p) and
                                    p["metadata"]["uid"] != first["metadata"]["uid"]), None),
                      timeout=120, what="store-0 again")
    assert second["metadata"]["name"] == "store-0"
    assert real.kubectl("exec", "-n", real_ns, "store-0", "--", "cat", "/data/proof").stdout == "kept\n"


def test_a_readiness_probe_gates_the_service_endpoints(real, real_ns):
    probe = {"readinessProbe": {"exec": {"command": ["test", "-f", "/tmp/ready"]},
                                "periodSeconds": 1, "failureThreshold": 1}}
    real.apply(sleeper("gated", probe), "-n", real_ns)
    real.apply({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "gated"},
                "spec": {"selector": {"app": "gated"}, "ports": [{"port": 80}]}}, "-n", real_ns)

    def addresses() -> tuple[list, list]:
        out = real.kubectl("get", "endpointslices", "-n", real_ns,
                           "-l", "kubernetes.io/service-name=gated", "-o", "json").stdout
        ready, not_ready = [], []
        for item in json.loads(out)["items"]:
            for endpoint in item.get("endpoints") or []:
                (ready if endpoint["conditions"].get("ready") else not_ready).extend(endpoint["addresses"])
        return ready, not_ready

    wait_for(lambda: addresses()[1], timeout=90, what="the pod listed as not ready")
    assert addresses()[0] == []
    real.kubectl("exec", "-n", real_ns, "gated", "--", "touch", "/tmp/ready")
    ip = wait_for(lambda: addresses()[0], timeout=30, what="a ready endpoint")
    assert ip[0].startswith("10.244.0.")
    real.kubectl("exec", "-n", real_ns, "gated", "--", "rm", "/tmp/ready")
    wait_for(lambda: not addresses()[0], timeout=30, what="the endpoint to be withdrawn")


ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.exclusive  # an operator watching every namespace would reconcile the other workers' objects
def test_the_operator_runs_as_a_pod_of_the_local_image_on_the_real_node(real, crds_installed, thirdparty_crds):
    """What `make lab` does on a real node: clusters/local/operator (the base Deployment and
    RBAC, the local image, its namespace placed on the real node, the ServiceMonitor the lab's
    Prometheus scrapes it by)."""
    real.kubectl("apply", "--server-side", "--force-conflicts", "-k",
                 str(ROOT / "clusters/local/operator"))
    try:
        real.kubectl("rollout", "status", "deployment/pimlab-operator", "-n", "pim-system",
                     "--timeout=180s", timeout=200)
        pod = ready_pods(real, "pim-system", "app.kubernetes.io/name=pimlab-operator")[0]
        assert pod["spec"]["nodeName"] == NODE_NAME
        assert pod["spec"]["serviceAccountName"] == "pimlab-operator"
        assert pod["spec"]["containers"][0]["image"] == IMAGE
        # it talks to the apiserver as its ServiceAccount, through the kubernetes Service
        logs = wait_for(lambda: (lambda out: out if "authentication has finished" in out else None)(
            real.kubectl("logs", "-n", "pim-system", pod["metadata"]["name"]).stdout),
            timeout=60, what="the operator to authenticate as its ServiceAccount")
        time.sleep(5)  # its watches start: a missing permission would show as Forbidden now
        logs = real.kubectl("logs", "-n", "pim-system", pod["metadata"]["name"]).stdout
        assert "Forbidden" not in logs and "Unauthorized" not in logs, logs[-2000:]
        # its /metrics answers through the Service its ServiceMonitor selects, every metric declared
        metrics = real.kubectl("get", "--raw", "/api/v1/namespaces/pim-system/services/"
                               "pimlab-operator-metrics:metrics/proxy/metrics").stdout
        for name in ("pimlab_operator_reconciles_total", "sql_failover_duration_seconds", "chaos_experiment_active",
                     "pimlab_drill_phase"):
            assert f"# TYPE {name} " in metrics, name
    finally:
        # an operator watching every namespace would reconcile the other tests' objects
        real.kubectl("delete", "deployment", "pimlab-operator", "-n", "pim-system",
                     "--wait=true", check=False)


@pytest.mark.exclusive
@pytest.mark.restarts_cluster
def test_cluster_down_leaves_nothing_behind_and_up_brings_it_back(real):
    """Down with pods running (a veth, mounts, iptables rules in use), then nothing of the
    node may remain on the machine. Runs after every other test (tests/conftest.py; `make test`
    runs it alone, after the parallel run); a cluster the run did not start is brought up again."""
    real_ns = f"r-{os.urandom(4).hex()}"  # not the fixture: its clean-up needs the cluster
    real.apply({"apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": real_ns, "annotations": REAL_NODE_NAMESPACE_ANNOTATIONS}})
    real.apply(sleeper("witness"), "-n", real_ns)
    ready_pods(real, real_ns, "app=witness")
    layout = real.plane.layout
    pids = real.plane.running()
    shims = teardown.shim_pids(layout)
    assert shims and teardown.mounts_below(layout.lab)
    real.plane.down(quiet=True)
    try:
        assert teardown.leftovers(layout) == []
        for pid in [*pids.values(), *shims]:
            assert not Path(f"/proc/{pid}").exists() or \
                Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] == "Z", pid
        for port in (layout.ports.apiserver, layout.ports.etcd_client, 10250, 10248, 10256):
            assert not listening(port), port
        assert not layout.state.exists()
    finally:
        if not real.started_here or os.environ.get("PIMLAB_KEEP_CLUSTER"):
            real.plane.up()
            assert real.plane.real_node and real.plane.healthy()

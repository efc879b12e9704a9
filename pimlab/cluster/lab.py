"""`pimlab lab up|down`: the whole lab on the local cluster.

Up: the cluster, the CRDs, the monitoring stack (pimlab.cluster.monitoring: prometheus-operator
and a Prometheus on the real node; only the monitoring CRDs with kwok nodes), then the operator
and the samples.
- With a real node (pimlab.cluster.local_cluster): the operator runs as a pod of the project's image
  (clusters/local/operator: the base Deployment and RBAC with the local image, its namespace
  placed on the real node), and the samples' namespace is placed on the real node too, with
  the Lab's image mapped to the local one, so the Lab's seven services run for real and the Lab
  is Ready only when their pods are.
- With kwok nodes only, or `--local-operator`: the operator runs as a local process
  authenticated as its own ServiceAccount (so its RBAC is what it is held to); kwok simulates
  the pods (with `--local-operator` on the real node, the operator's own Deployment beside it:
  its namespace tolerates the kwok nodes' taint).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import yaml

from pimlab.cluster import images, monitoring
from pimlab.cluster.layout import REAL_NODE_NAMESPACE_ANNOTATIONS
from pimlab.cluster.local_cluster import LocalCluster
from pimlab.cluster.local_operator import (
    OPERATOR_NAMESPACE, install_operator_manifests, lab_operator, write_operator_kubeconfig,
)
from pimlab_operator.render import project_home


#: What one 2-core node can hold: the samples' requests are sized for a real cluster.
LOCAL_SERVICE_RESOURCES = {"requests": {"cpu": "25m", "memory": "96Mi"}, "limits": {"memory": "512Mi"}}
LOCAL_SHARD_RESOURCES = {"requests": {"cpu": "50m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}}


def _sample_files(real_node: bool) -> list[Path]:
    """samples/*.yaml; on the real node the Shards are the PostgreSQL variant (samples/postgres/):
    SQL Server has no image here."""
    home = project_home() / "samples"
    files = sorted(home.glob("*.yaml"))
    if real_node:
        files = [home / "postgres" / f.name if (home / "postgres" / f.name).exists() else f for f in files]
    return files


def sample_documents(real_node: bool) -> list[dict]:
    """samples/ as applied here. On the real node: the samples' namespace is placed there; the
    Lab and the Shards run the image built on this machine (there is no registry to pull from),
    with requests one node can hold; the Shards are PostgreSQL; the services trust the Lab's
    development issuer and export no traces (no identity provider or collector runs here); and
    the one-off PersonaLoads are left for the user to start (the node has no room for a 30-minute
    peak load beside the lab). With kwok nodes only they are applied as written. Drills are never
    applied here: one runs a load and real faults, and is started on purpose."""
    docs = []
    for path in _sample_files(real_node):
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc or doc["kind"] == "Drill":
                continue
            if real_node and doc["kind"] == "Namespace":
                doc["metadata"].setdefault("annotations", {}).update(REAL_NODE_NAMESPACE_ANNOTATIONS)
            if real_node and doc["kind"] == "Lab":
                spec = doc["spec"]
                spec.update(image=images.PROJECT_IMAGE, imagePullPolicy="Never")
                spec.pop("auth", None)
                spec.get("observability", {}).pop("otlpEndpoint", None)
                for service in spec.get("services", {}).values():
                    service["resources"] = LOCAL_SERVICE_RESOURCES
            if real_node and doc["kind"] == "Shard":
                doc["spec"].update(image=images.PROJECT_IMAGE, resources=LOCAL_SHARD_RESOURCES)
            if real_node and doc["kind"] == "PersonaLoad" and not doc["spec"].get("schedule"):
                continue
            docs.append(doc)
    return docs


class LocalLab:
    """The lab on the working tree's local cluster (`plane`): CRDs, monitoring, the operator
    and the samples."""

    def __init__(self, root: Path | str = ".", out=sys.stdout):
        self.plane = LocalCluster(root, log=out)
        self.out = out
        self.operator = lab_operator(self.plane.layout)
        self.operator_log = self.operator.log
        self.operator_kubeconfig = self.operator.kubeconfig

    def say(self, message: str) -> None:
        self.plane.say(message)

    def refresh_project_image(self) -> bool:
        """The node's project image rebuilt and imported if its sources changed since it was
        imported (a lab that already runs skips the cluster's own image step). True when it
        was: the pods started before still run the old one."""
        done = images.ensure([images.PROJECT_IMAGE], str(self.plane.layout.containerd_socket),
                             self.plane.progress)
        return done[images.PROJECT_IMAGE] == "imported"

    def up(self, samples: bool = True, local_operator: bool = False) -> None:
        home = project_home()
        self.plane.up(real_node_builds=monitoring.BUILD_STEPS)
        kubectl = self.plane.kubectl
        step = self.plane.progress.step
        real = self.plane.real_node
        refreshed = real and self.refresh_project_image()
        with step("crds", "installing the CRDs from crds/"):
            kubectl("apply", "--server-side", "--force-conflicts", "-f", str(home / "crds"))
            kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
        if real:
            url = monitoring.install(self.plane)
            self.say(f"Prometheus is up: {url} from the host (the Lab names it as {monitoring.prometheus_url()})")
        else:
            with step("monitoring-crds", "installing the monitoring.coreos.com CRDs from crds/thirdparty/ "
                      "(kwok runs no Prometheus pod: the SLOs' rules are made, not evaluated)"):
                monitoring.install_crds(self.plane)
        if real and not local_operator:
            with step("operator", "installing the operator as a pod on the real node (clusters/local/operator)"):
                self._operator_pod(refreshed)
        else:
            why = "--local-operator" if real else "kwok only simulates its pod"
            with step("operator", "installing the operator's namespace, RBAC and Deployment "
                      f"(clusters/base/operator); {why}, so the operator runs as a local process"):
                self._local_operator(real)
        if samples:
            where = "on the real node, Lab image mapped to the local one" if real else "on kwok nodes"
            with step("samples", f"applying samples/ ({where})"):
                kubectl("apply", "--server-side", "--force-conflicts", "-f", "-",
                        input=yaml.safe_dump_all(sample_documents(real)))

    def _operator_pod(self, refreshed: bool) -> None:
        """The operator as a pod of the project's image, restarted when that image changed."""
        kubectl = self.plane.kubectl
        self.operator.stop()
        kubectl("apply", "--server-side", "--force-conflicts", "-k",
                str(project_home() / "clusters/local/operator"))
        if refreshed:
            self.say("the project image changed since the lab started: restarting the operator "
                     "(the Lab's and Shards' pods keep the old image until they are recreated, e.g. "
                     "`kubectl -n lab rollout restart deployment`)")
            kubectl("rollout", "restart", "deployment/pimlab-operator", "-n", OPERATOR_NAMESPACE)
        proc = kubectl("rollout", "status", "deployment/pimlab-operator", "-n",
                       OPERATOR_NAMESPACE, "--timeout=120s", check=False, timeout=130)
        if proc.returncode != 0:
            raise RuntimeError(
                f"the operator's pod did not become ready: {proc.stderr.strip()}; see "
                f"`kubectl -n {OPERATOR_NAMESPACE} logs deployment/pimlab-operator`")

    def _local_operator(self, real: bool) -> None:
        """The operator as a local process with its ServiceAccount's token, beside its
        Deployment (simulated by kwok)."""
        if real:  # the Deployment's pod is simulated beside the local process, not run
            self.plane.ensure_kwok_namespace(OPERATOR_NAMESPACE)
        install_operator_manifests(self.plane)
        if self.operator.pid():
            self.say("restarting the operator")
        write_operator_kubeconfig(self.plane, self.operator_kubeconfig)
        pid = self.operator.start()
        self.say(f"operator started (pid {pid}, log {self.operator_log})")

    def wait_ready(self, timeout: int, namespace: str = "lab") -> None:
        """Every Lab in `namespace` Ready within `timeout` seconds (a step); raises saying where
        to look. With kwok only, rolled out (Progressing=False) instead: the sample's SQL Server
        Shards never bootstrap there (kwok runs nothing), so the Lab stays not Ready
        (ShardsNotReady); it is as far as it gets once its services are rolled out."""
        condition, state = ("Ready", "Ready") if self.plane.real_node else ("Progressing=False", "rolled out")
        with self.plane.progress.step("lab-ready", f"waiting for the Lab in namespace {namespace} to be {state}"):
            proc = self.plane.kubectl("wait", f"--for=condition={condition}", "lab", "--all", "-n", namespace,
                                      f"--timeout={timeout}s", check=False, timeout=timeout + 10)
            if proc.returncode != 0:
                raise RuntimeError(f"the Lab did not become {state}: {proc.stderr.strip()} "
                                   f"(kubectl get lab -n {namespace} -o wide says why)")

    def seed(self, namespace: str = "lab", lab: str = "pim", attempts: int = 5) -> str:
        """Synthetic reference data and patients in the Lab's shards (`pimlab seed`, run in its
        admin pod: idempotent). The embedded SQLite default seeds itself; database shards start
        empty, and a booking needs the providers and facilities. A Ready Lab does not mean every
        Shard takes quorum writes yet: wait for the Shards, and try again while a write is
        refused (a 503-like failure is retried by the seed itself being idempotent)."""
        self.plane.kubectl("wait", "--for=condition=Ready", "shard", "--all", "-n", namespace,
                           "--timeout=300s", timeout=310)
        for attempt in range(attempts):
            proc = self.plane.kubectl("exec", "-n", namespace, f"deployment/{lab}-admin", "--", "pimlab", "seed",
                                      check=False, timeout=300)
            if proc.returncode == 0:
                return proc.stdout.strip()
            time.sleep(5 * (attempt + 1))
        raise RuntimeError(f"seeding the lab failed: {(proc.stderr or proc.stdout).strip()[-500:]}")

    def operator_runs_as_pod(self) -> bool:
        return self.plane.real_node and self.operator.pid() is None

    def gateway_hint(self, namespace: str = "lab", lab: str = "pim") -> str:
        """How to reach the sample Lab's gateway from the host."""
        service = f"{lab}-gateway"
        proc = self.plane.kubectl("get", "service", service, "-n", namespace, "-o", "json",
                                  check=False)
        if proc.returncode != 0:
            return f"(no Service {namespace}/{service} yet)"
        spec = json.loads(proc.stdout)["spec"]
        port = spec["ports"][0]["port"]
        hint = (f"  kubectl -n {namespace} port-forward service/{service} 18080:{port} &\n"
                f"  curl http://127.0.0.1:18080/healthz")
        if self.plane.real_node:
            hint = (f"  curl http://{spec['clusterIP']}:{port}/healthz   "
                    "# the ClusterIP answers from the host (kube-proxy runs here)\n" + hint)
        return hint

    def prometheus_hint(self) -> str:
        """How to open the lab's Prometheus from the host (real node only)."""
        ns = monitoring.NAMESPACE
        ip = self.plane.kubectl("get", "service", "prometheus", "-n", ns, "-o", "jsonpath={.spec.clusterIP}",
                                check=False).stdout.strip()
        if not self.plane.real_node or not ip:
            return "  (no Prometheus runs: kwok nodes only)"
        return (f"  curl 'http://{ip}:9090/api/v1/alerts'   # the ClusterIP answers from the host\n"
                f"  kubectl -n {ns} port-forward service/prometheus 9090:9090 &   # then http://127.0.0.1:9090\n"
                "  kubectl get slo -n lab   # Budget and Worst burn, read from it")

    def down(self) -> None:
        if self.operator.pid():
            self.say("stopping the operator")
        self.operator.stop()
        self.operator_kubeconfig.unlink(missing_ok=True)
        self.plane.down()

    def state(self) -> str:
        proc = self.plane.kubectl("get", "pimlab,deployments,statefulsets,jobs,cronjobs",
                                  "-A", check=False)
        return proc.stdout + proc.stderr

"""The lab's in-cluster monitoring, for the lab to apply: the monitoring CRDs
(`crds/thirdparty/`), prometheus-operator and one Prometheus object. Both run the images of
pimlab.cluster.images (prometheus_operator.py, prometheus.py): Debian's Prometheus, in the
project's image, has no Kubernetes service discovery, so it cannot load the scrape
configuration prometheus-operator writes for a ServiceMonitor.

    crd_files()                  -> the monitoring.coreos.com CRD files, for server-side apply
    install_crds(cluster)        -> apply them and wait until they are Established
    manifests(...)               -> ServiceAccounts, RBAC, Deployment, Services and the Prometheus
    install(cluster)             -> on the real node: the CRDs, both images imported into the
                                    node's containerd, the stack applied, Prometheus Ready;
                                    returns the Prometheus URL the host reaches (its ClusterIP)
    prometheus_url(namespace)    -> what to put in Lab.spec.observability.prometheusUrl
"""

from __future__ import annotations

from pathlib import Path

import yaml

from pimlab.cluster import images, prometheus_operator_build
from pimlab.cluster.handle import ClusterHandle
from pimlab.cluster.layout import REAL_NODE_NAMESPACE_ANNOTATIONS
from pimlab.cluster.procs import ClusterError
from pimlab.waiting import TimedOut, wait_for
from pimlab_operator.render import render

OPERATOR_IMAGE = images.PROMETHEUS_OPERATOR_IMAGE
PROMETHEUS_IMAGE = images.PROMETHEUS_IMAGE
NAMESPACE = "monitoring"
PROMETHEUS_NAME = "lab"
FIELD_MANAGER = "pimlab-cluster"
#: prometheus-operator picks Prometheus's flags by it.
PROMETHEUS_VERSION = prometheus_operator_build.PROMETHEUS_VERSION
LABELS = {"app.kubernetes.io/part-of": "pim-sre-lab", "app.kubernetes.io/component": "monitoring"}
#: The Go builds the stack's images need (steps), for the Go lane of a cold cluster start.
BUILD_STEPS = (prometheus_operator_build.build_step, prometheus_operator_build.prometheus_step)


def crd_files() -> list[Path]:
    root = Path(__file__).resolve().parents[2] / "crds" / "thirdparty"
    return sorted(root.glob("monitoring.coreos.com_*.yaml"))


def install_crds(cluster: ClusterHandle, timeout: float = 60) -> list[str]:
    """The project's copy of the monitoring.coreos.com CRDs, applied server-side (the Prometheus
    CRD is too large for client-side apply) and Established."""
    files = crd_files()
    names = [yaml.safe_load(f.read_text())["metadata"]["name"] for f in files]
    cluster.kubectl("apply", "--server-side", "--force-conflicts", f"--field-manager={FIELD_MANAGER}",
                    *[f"-f={f}" for f in files])
    established = 'jsonpath={.status.conditions[?(@.type=="Established")].status}'
    for name in names:  # `kubectl wait` errors on a CRD with no conditions yet: poll instead
        try:
            wait_for(lambda: cluster.kubectl("get", f"crd/{name}", "-o", established,
                                             check=False).stdout == "True", timeout=timeout)
        except TimedOut:
            raise ClusterError(f"crd/{name} was not Established in {timeout:.0f} s") from None
    return names


def install(cluster: ClusterHandle, namespace: str = NAMESPACE, timeout: int = 180) -> str:
    """The monitoring stack on the real node, as kube-prometheus-stack has it: the CRDs, then
    prometheus-operator (a pod, its image built from the Go module proxy and imported into the
    node's containerd), then the Prometheus object whose StatefulSet prometheus-operator makes.
    Returns the URL of Prometheus from the host (its ClusterIP: kube-proxy runs on the host)."""
    install_crds(cluster)
    images.ensure([OPERATOR_IMAGE, PROMETHEUS_IMAGE], str(cluster.layout.containerd_socket), cluster.progress)
    with cluster.progress.step("monitoring", f"installing prometheus-operator and Prometheus/{PROMETHEUS_NAME} "
                               f"in namespace {namespace}"):
        return _apply_stack(cluster, namespace, timeout)


def _apply_stack(cluster: ClusterHandle, namespace: str, timeout: int) -> str:
    """prometheus-operator and the Prometheus object applied and rolled out; Prometheus's URL."""
    ns = {"apiVersion": "v1", "kind": "Namespace",
          "metadata": {"name": namespace, "labels": LABELS, "annotations": REAL_NODE_NAMESPACE_ANNOTATIONS}}
    cluster.kubectl("apply", "--server-side", "--force-conflicts", f"--field-manager={FIELD_MANAGER}", "-f", "-",
                    input=yaml.safe_dump_all([ns, *manifests(namespace)]))
    proc = cluster.kubectl("rollout", "status", "deployment/prometheus-operator", "-n", namespace,
                           f"--timeout={timeout}s", check=False, timeout=timeout + 10)
    if proc.returncode != 0:
        raise ClusterError(f"prometheus-operator did not become available: {proc.stderr.strip()}; see "
                           f"`kubectl -n {namespace} logs deployment/prometheus-operator`")
    statefulset = f"statefulset/prometheus-{PROMETHEUS_NAME}"
    try:  # prometheus-operator creates the StatefulSet a moment after it starts
        wait_for(lambda: cluster.kubectl("get", statefulset, "-n", namespace, check=False).returncode == 0,
                 timeout=60, interval=1)
    except TimedOut:
        raise ClusterError(f"prometheus-operator made no {statefulset} in 60 s; see "
                           f"`kubectl -n {namespace} logs deployment/prometheus-operator`") from None
    proc = cluster.kubectl("rollout", "status", statefulset, "-n", namespace, f"--timeout={timeout}s",
                           check=False, timeout=timeout + 10)
    if proc.returncode != 0:
        raise ClusterError(f"Prometheus did not become ready: {proc.stderr.strip()}; see "
                           f"`kubectl -n {namespace} describe pods` and `kubectl -n {namespace} logs "
                           f"{statefulset} -c prometheus`")
    ip = cluster.kubectl("get", "service", "prometheus", "-n", namespace, "-o",
                         "jsonpath={.spec.clusterIP}").stdout.strip()
    return f"http://{ip}:9090"


def manifests(namespace: str = NAMESPACE, operator_image: str = OPERATOR_IMAGE,
              prometheus_image: str = PROMETHEUS_IMAGE, prometheus_name: str = PROMETHEUS_NAME) -> list[dict]:
    return render("monitoring/stack.yaml.j2", namespace=namespace, labels=LABELS, operator_image=operator_image,
                  prometheus_image=prometheus_image, prometheus_version=PROMETHEUS_VERSION,
                  prometheus_name=prometheus_name)


def prometheus_url(namespace: str = NAMESPACE) -> str:
    return f"http://prometheus.{namespace}:9090"

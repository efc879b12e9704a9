"""Cluster add-ons on the real node, as kind has them: CoreDNS (kube-system, the kube-dns
Service at 10.96.0.10) and local-path-provisioner with the default StorageClass `standard`.

The manifests are the jinja2 templates in templates/cluster/; their images are the local ones
of pimlab.cluster.images (imported into the node's containerd, `imagePullPolicy: Never`);
the images' ENTRYPOINT is the add-on's binary, so the manifests give only its arguments.
"""

from __future__ import annotations

from pathlib import Path

import jinja2
import yaml

from pimlab.cluster import images
from pimlab.cluster.handle import ClusterHandle
from pimlab.cluster.layout import (
    CLUSTER_DNS_IP, CLUSTER_DOMAIN, REAL_NODE_LABEL, REAL_NODE_TOLERATION, Layout,
)
from pimlab.cluster.procs import ClusterError

TEMPLATES = Path(__file__).resolve().parents[2] / "templates" / "cluster"
# Every image the node needs before its first pod: the sandbox, the add-ons, and the project's
# image (local-path-provisioner's helper pods run a shell from it).
NODE_IMAGES = (images.PAUSE_IMAGE, images.COREDNS_IMAGE, images.LOCAL_PATH_IMAGE,
               images.PROJECT_IMAGE)
ADDON_DEPLOYMENTS = (("kube-system", "coredns"), ("local-path-storage", "local-path-provisioner"))

_env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)),
                          undefined=jinja2.StrictUndefined, keep_trailing_newline=True)


def real_node_placement() -> dict:
    """nodeSelector and tolerations that put a pod on the real node."""
    return {"node_selector": dict([REAL_NODE_LABEL]), "tolerations": [REAL_NODE_TOLERATION]}


def render(layout: Layout) -> list[dict]:
    """Every add-on object, parsed (so a template error shows here, not in the apiserver)."""
    docs = []
    placement = real_node_placement()
    sources = {
        "coredns.yaml.j2": dict(image=images.COREDNS_IMAGE, dns_ip=CLUSTER_DNS_IP, cluster_domain=CLUSTER_DOMAIN),
        "local-path.yaml.j2": dict(image=images.LOCAL_PATH_IMAGE, helper_image=images.PROJECT_IMAGE,
                                   volumes_dir=str(layout.volumes)),
    }
    for template, values in sources.items():
        text = _env.get_template(template).render(**values, **placement)
        docs += [doc for doc in yaml.safe_load_all(text) if doc]
    return docs


def install(cluster: ClusterHandle, timeout: int = 120) -> None:
    """Apply the add-ons and wait until their Deployments are available (a step)."""
    with cluster.progress.step("addons-install", "installing the add-ons: CoreDNS, "
                               "local-path-provisioner, StorageClass standard"):
        _apply(cluster, timeout)


def _apply(cluster: ClusterHandle, timeout: int) -> None:
    cluster.kubectl("apply", "--server-side", "--field-manager=pimlab-cluster",
                    "--force-conflicts", "-f", "-", input=yaml.safe_dump_all(render(cluster.layout)))
    for namespace, name in ADDON_DEPLOYMENTS:
        proc = cluster.kubectl("rollout", "status", f"deployment/{name}", "-n", namespace,
                               f"--timeout={timeout}s", check=False, timeout=timeout + 10)
        if proc.returncode != 0:
            pods = cluster.kubectl("get", "pods", "-n", namespace, "-o", "wide", check=False).stdout
            raise ClusterError(
                f"add-on {namespace}/{name} did not become available: {proc.stderr.strip()}\n"
                f"{pods}see `kubectl -n {namespace} describe pods` and "
                f"{cluster.layout.log('kubelet')}")

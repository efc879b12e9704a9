"""Where one local cluster lives and which addresses it uses.

Everything is below the working tree's `.lab/` (ignored by git): `.lab/kubeconfig`,
`.lab/bin/` (links to the cached binaries), `.lab/logs/` (the build and image steps' output, kept
across `down`), `.lab/cluster/` (pki, etcd data, logs, pids) and `.lab/cluster/node/`
(containerd's root, state and socket, kubelet's root dir, CNI config and IPAM state, pod logs,
local-path volumes).

Addresses:
- the control plane listens on 127.0.0.1 only (ports below, moved by PIMLAB_PORT_OFFSET);
- Service CIDR 10.96.0.0/16 (kubernetes: 10.96.0.1, cluster DNS: 10.96.0.10);
- the real node's pod CIDR is 10.244.0.0/24 on the bridge `pimlab0`, whose address 10.244.0.1
  is the node's InternalIP; kwok's fake pod IPs come from 10.245.0.0/16 so they never collide.
Nothing is routed or masqueraded towards any outside address: pods reach the host, each other
and Services, and nothing else.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

HOST = "127.0.0.1"
SERVICE_CIDR = "10.96.0.0/16"
KUBERNETES_SERVICE_IP = "10.96.0.1"
CLUSTER_DNS_IP = "10.96.0.10"
CLUSTER_DOMAIN = "cluster.local"
POD_CIDR = "10.244.0.0/24"
NODE_IP = "10.244.0.1"
BRIDGE = "pimlab0"
KWOK_POD_CIDR = "10.245.0.0/16"
NODE_NAME = "pimlab-node"
KWOK_NODES = ("kwok-node-0", "kwok-node-1")

# The boundary between the real node and the kwok nodes. The real node carries this taint and
# label: a pod runs for real only when it tolerates the taint and selects the label, either
# itself or through its namespace (see `REAL_NODE_NAMESPACE_ANNOTATIONS`).
REAL_NODE_LABEL = ("pimlab.lab/node", "real")
REAL_NODE_TAINT = {"key": "pimlab.lab/real-node", "value": "true", "effect": "NoSchedule"}
REAL_NODE_TOLERATION = {"key": REAL_NODE_TAINT["key"], "operator": "Exists",
                        "effect": REAL_NODE_TAINT["effect"]}
# With a real node beside them, the kwok nodes carry kwok's own taint for fake nodes: only a pod
# that tolerates it (the scale tests', a namespace with `KWOK_NAMESPACE_ANNOTATIONS`) lands
# there, so a pod that nobody placed stays Pending, saying why, instead of "Running" on a node
# where nothing runs. With kwok nodes only they are untainted: every pod is simulated there.
KWOK_NODE_ANNOTATION = ("kwok.x-k8s.io/node", "fake")
KWOK_NODE_TAINT = {"key": KWOK_NODE_ANNOTATION[0], "value": KWOK_NODE_ANNOTATION[1],
                   "effect": "NoSchedule"}
KWOK_NODE_TOLERATION = {"key": KWOK_NODE_TAINT["key"], "operator": "Exists",
                        "effect": KWOK_NODE_TAINT["effect"]}
# The apiserver's PodNodeSelector and PodTolerationRestriction admission plugins apply these
# to every pod created in an annotated namespace.
SCHEDULER_ANNOTATION_PREFIX = "scheduler.alpha.kubernetes.io/"
REAL_NODE_SELECTOR_ANNOTATION = SCHEDULER_ANNOTATION_PREFIX + "node-selector"
REAL_NODE_NAMESPACE_ANNOTATIONS = {
    REAL_NODE_SELECTOR_ANNOTATION: "=".join(REAL_NODE_LABEL),
    SCHEDULER_ANNOTATION_PREFIX + "defaultTolerations": json.dumps([REAL_NODE_TOLERATION]),
}
KWOK_NAMESPACE_ANNOTATIONS = {
    SCHEDULER_ANNOTATION_PREFIX + "defaultTolerations": json.dumps([KWOK_NODE_TOLERATION]),
}

# Fixed ports of the real node (one real node per machine).
KUBELET_PORT = 10250
KUBELET_HEALTHZ_PORT = 10248
KUBE_PROXY_HEALTHZ_PORT = 10256
KUBE_PROXY_METRICS_PORT = 10249


def cache_root() -> Path:
    """Where the built binaries, images and step timings are cached, outside any working tree:
    $PIMLAB_CACHE, else $XDG_CACHE_HOME/pimlab, else ~/.cache/pimlab."""
    base = os.environ.get("PIMLAB_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "pimlab"
    )
    return Path(base)


@dataclass(frozen=True)
class Ports:
    etcd_client: int = 12379
    etcd_peer: int = 12380
    apiserver: int = 16443
    controller_manager: int = 16257
    scheduler: int = 16259
    kwok: int = 16260
    # GitOps (pimlab.cluster.gitops): the Git server, source-controller's artifact server and
    # the two Flux controllers' health endpoints
    git_http: int = 16270
    flux_artifacts: int = 16271
    flux_source_health: int = 16272
    flux_kustomize_health: int = 16273

    @classmethod
    def from_env(cls) -> "Ports":
        base = int(os.environ.get("PIMLAB_PORT_OFFSET", "0"))
        return cls(*(p + base for p in cls().__dict__.values()))


@dataclass
class Layout:
    """Where everything of one local cluster lives, below a working tree's `.lab/`."""

    root: Path
    ports: Ports = field(default_factory=Ports.from_env)

    @property
    def lab(self) -> Path:
        return self.root / ".lab"

    @property
    def kubeconfig(self) -> Path:
        return self.lab / "kubeconfig"

    @property
    def bin(self) -> Path:
        return self.lab / "bin"

    @property
    def step_logs(self) -> Path:
        """The build and image steps' logs (pimlab.cluster.progress), one per step."""
        return self.lab / "logs"

    @property
    def state(self) -> Path:
        return self.lab / "cluster"

    @property
    def pki(self) -> Path:
        return self.state / "pki"

    @property
    def logs(self) -> Path:
        return self.state / "logs"

    @property
    def pids(self) -> Path:
        return self.state / "pids"

    @property
    def kubeconfigs(self) -> Path:
        return self.state / "kubeconfigs"

    @property
    def cluster_id_file(self) -> Path:
        return self.state / "id"

    @property
    def node_mode_file(self) -> Path:
        """`real` or `kwok: <why>`, written by `up`."""
        return self.state / "node-mode"

    # -- the real node ---------------------------------------------------------------------

    @property
    def node(self) -> Path:
        return self.state / "node"

    @property
    def containerd_root(self) -> Path:
        return self.node / "containerd" / "root"

    @property
    def containerd_state(self) -> Path:
        return self.node / "containerd" / "state"

    @property
    def containerd_config(self) -> Path:
        return self.node / "containerd" / "config.toml"

    @property
    def containerd_registry_config(self) -> Path:
        return self.node / "containerd" / "hosts"

    @property
    def containerd_socket(self) -> Path:
        return self.node / "containerd.sock"

    @property
    def kubelet_dir(self) -> Path:
        return self.node / "kubelet"

    @property
    def kubelet_config(self) -> Path:
        return self.node / "kubelet.yaml"

    @property
    def kube_proxy_config(self) -> Path:
        return self.node / "kube-proxy.yaml"

    @property
    def cni_conf_dir(self) -> Path:
        return self.node / "cni" / "net.d"

    @property
    def cni_ipam_dir(self) -> Path:
        return self.node / "cni" / "ipam"

    @property
    def pod_logs(self) -> Path:
        return self.node / "pod-logs"

    @property
    def volumes(self) -> Path:
        """local-path-provisioner's storage: one directory per PersistentVolume."""
        return self.node / "volumes"

    def log(self, component: str) -> Path:
        return self.logs / f"{component}.log"

    def pid(self, component: str) -> Path:
        return self.pids / f"{component}.pid"

    @property
    def server(self) -> str:
        return f"https://{HOST}:{self.ports.apiserver}"

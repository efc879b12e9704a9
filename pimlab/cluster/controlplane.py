"""The control plane: etcd, kube-apiserver, kube-controller-manager and kube-scheduler, on
loopback, TLS everywhere, client-certificate authentication and Node,RBAC authorization; and kwok,
which simulates the kwok nodes' kubelets wherever kwok nodes are wanted.

This module says how each is started (credentials, flags, health checks) and registers the kwok
nodes; `pimlab.cluster.local_cluster` runs them, with the real node beside them.
"""

from __future__ import annotations

from pathlib import Path

from pimlab.cluster import build
from pimlab.cluster.handle import write_kubeconfig
from pimlab.cluster.layout import (
    HOST, KUBERNETES_SERVICE_IP, KWOK_NODE_ANNOTATION, KWOK_NODE_TAINT, KWOK_NODES, KWOK_POD_CIDR,
    SERVICE_CIDR, Layout,
)
from pimlab.cluster.pki import CertificateAuthority, KeyPair, service_account_keys
from pimlab.cluster.procs import Component, https_ok, port_open

START_ORDER = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")
KWOK = "kwok"


class ControlPlane:
    def __init__(self, layout: Layout):
        self.layout = layout

    @property
    def ca(self) -> Path:
        return self.layout.pki / "ca.crt"

    @property
    def admin(self) -> KeyPair:
        return KeyPair(self.layout.pki / "admin.crt", self.layout.pki / "admin.key")

    def credentials(self) -> dict[str, KeyPair]:
        ca = CertificateAuthority(self.layout.pki)
        loopback = (HOST, "localhost")
        pairs = {
            "etcd-server": ca.issue("etcd-server", "etcd", server_names=loopback),
            "apiserver-etcd": ca.issue("apiserver-etcd-client", "kube-apiserver-etcd-client"),
            "apiserver": ca.issue(
                "apiserver", "kube-apiserver", client=False,
                server_names=(*loopback, KUBERNETES_SERVICE_IP, "kubernetes", "kubernetes.default",
                              "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"),
            ),
            "admin": ca.issue("admin", "pimlab-admin", "system:masters"),
            "controller-manager": ca.issue(
                "controller-manager", "system:kube-controller-manager"),
            "controller-manager-serving": ca.issue(
                "controller-manager-serving", "kube-controller-manager", client=False,
                server_names=loopback),
            "scheduler": ca.issue("scheduler", "system:kube-scheduler"),
            "scheduler-serving": ca.issue(
                "scheduler-serving", "kube-scheduler", client=False, server_names=loopback),
            "kwok": ca.issue("kwok", "kwok-controller", "system:masters"),
            # the apiserver's client certificate towards kubelets (logs, exec, port-forward)
            "apiserver-kubelet": ca.issue("apiserver-kubelet-client", "kube-apiserver-kubelet-client",
                                          "system:masters"),
        }
        service_account_keys(self.layout.pki)
        return pairs

    def components(self, creds: dict[str, KeyPair]) -> list[Component]:
        lay, ports, ca = self.layout, self.layout.ports, self.ca
        bin_dir = lay.bin
        sa_key, sa_pub = lay.pki / "sa.key", lay.pki / "sa.pub"
        kubeconfigs = lay.kubeconfigs
        for user in ("controller-manager", "scheduler"):
            write_kubeconfig(kubeconfigs / f"{user}.kubeconfig", lay.server, ca,
                              creds[user], user)
        admin = creds["admin"]

        def kubeconfig(user: str) -> str:
            return str(kubeconfigs / f"{user}.kubeconfig")

        etcd_url = f"https://{HOST}:{ports.etcd_client}"
        return [
            Component(
                "etcd", bin_dir / "etcd",
                [
                    "--name=pimlab", f"--data-dir={lay.state / 'etcd'}",
                    f"--listen-client-urls={etcd_url}", f"--advertise-client-urls={etcd_url}",
                    f"--listen-peer-urls=https://{HOST}:{ports.etcd_peer}",
                    f"--initial-advertise-peer-urls=https://{HOST}:{ports.etcd_peer}",
                    f"--initial-cluster=pimlab=https://{HOST}:{ports.etcd_peer}",
                    f"--cert-file={creds['etcd-server'].cert}",
                    f"--key-file={creds['etcd-server'].key}",
                    f"--trusted-ca-file={ca}", "--client-cert-auth=true",
                    f"--peer-cert-file={creds['etcd-server'].cert}",
                    f"--peer-key-file={creds['etcd-server'].key}",
                    f"--peer-trusted-ca-file={ca}", "--peer-client-cert-auth=true",
                    "--listen-metrics-urls=", "--log-level=warn",
                    "--quota-backend-bytes=2147483648", "--unsafe-no-fsync=true",
                ],
                lambda: https_ok(f"{etcd_url}/health", ca, creds["apiserver-etcd"], b"true"),
            ),
            Component(
                "kube-apiserver", bin_dir / "kube-apiserver",
                [
                    f"--advertise-address={HOST}", f"--bind-address={HOST}",
                    f"--secure-port={ports.apiserver}",
                    f"--etcd-servers={etcd_url}", f"--etcd-cafile={ca}",
                    f"--etcd-certfile={creds['apiserver-etcd'].cert}",
                    f"--etcd-keyfile={creds['apiserver-etcd'].key}",
                    f"--tls-cert-file={creds['apiserver'].cert}",
                    f"--tls-private-key-file={creds['apiserver'].key}",
                    f"--client-ca-file={ca}",
                    "--authorization-mode=Node,RBAC", "--anonymous-auth=false",
                    f"--service-account-key-file={sa_pub}",
                    f"--service-account-signing-key-file={sa_key}",
                    "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                    f"--service-cluster-ip-range={SERVICE_CIDR}",
                    "--allow-privileged=true", "--endpoint-reconciler-type=none",
                    # a namespace annotation puts its pods on the real node (layout.py)
                    "--enable-admission-plugins=PodNodeSelector,PodTolerationRestriction",
                    f"--kubelet-client-certificate={creds['apiserver-kubelet'].cert}",
                    f"--kubelet-client-key={creds['apiserver-kubelet'].key}",
                    # kubelet refuses a loopback node IP; the node's InternalIP is the bridge's
                    "--kubelet-preferred-address-types=InternalIP",
                    f"--cert-dir={lay.state / 'apiserver-certs'}",
                    "--v=1",
                ],
                lambda: https_ok(f"{lay.server}/readyz", ca, admin),
                timeout=120,
            ),
            Component(
                "kube-controller-manager", bin_dir / "kube-controller-manager",
                [
                    f"--kubeconfig={kubeconfig('controller-manager')}",
                    f"--authentication-kubeconfig={kubeconfig('controller-manager')}",
                    f"--authorization-kubeconfig={kubeconfig('controller-manager')}",
                    f"--bind-address={HOST}", f"--secure-port={ports.controller_manager}",
                    f"--tls-cert-file={creds['controller-manager-serving'].cert}",
                    f"--tls-private-key-file={creds['controller-manager-serving'].key}",
                    f"--client-ca-file={ca}", f"--root-ca-file={ca}",
                    f"--service-account-private-key-file={sa_key}",
                    "--use-service-account-credentials=true", "--leader-elect=false",
                    f"--service-cluster-ip-range={SERVICE_CIDR}",
                    "--controllers=*,-nodeipam", "--v=1",
                ],
                lambda: https_ok(f"https://{HOST}:{ports.controller_manager}/healthz", ca, admin),
            ),
            Component(
                "kube-scheduler", bin_dir / "kube-scheduler",
                [
                    f"--kubeconfig={kubeconfig('scheduler')}",
                    f"--authentication-kubeconfig={kubeconfig('scheduler')}",
                    f"--authorization-kubeconfig={kubeconfig('scheduler')}",
                    f"--bind-address={HOST}", f"--secure-port={ports.scheduler}",
                    f"--tls-cert-file={creds['scheduler-serving'].cert}",
                    f"--tls-private-key-file={creds['scheduler-serving'].key}",
                    f"--client-ca-file={ca}", "--leader-elect=false", "--v=1",
                ],
                lambda: https_ok(f"https://{HOST}:{ports.scheduler}/healthz", ca, admin),
            ),
        ]

    def kwok(self, creds: dict[str, KeyPair]) -> Component:
        """kwok, simulating the kubelets of the nodes annotated as fake (kwok_nodes())."""
        lay, ports = self.layout, self.layout.ports
        kubeconfig = lay.kubeconfigs / "kwok.kubeconfig"
        write_kubeconfig(kubeconfig, lay.server, self.ca, creds["kwok"], "kwok")
        return Component(
            KWOK, lay.bin / KWOK,
            [
                f"--kubeconfig={kubeconfig}",
                "--manage-all-nodes=false",
                "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
                f"--server-address={HOST}:{ports.kwok}",
                f"--cidr={KWOK_POD_CIDR}", f"--node-ip={HOST}",
                # Node leases: without them the node-lifecycle controller sees stale
                # heartbeats, marks the nodes NotReady and their pods not Ready.
                "--node-lease-duration-seconds=40",
            ],
            lambda: port_open(ports.kwok),
        )

    def kwok_nodes(self, tainted: bool) -> list[dict]:
        """Node objects that kwok simulates kubelets for (annotated as fake). `tainted` (a real
        node runs beside them): they carry kwok's NoSchedule taint, so only the pods that
        tolerate it are simulated there (layout.KWOK_NODE_TAINT)."""
        return [kwok_node(name, index, tainted) for index, name in enumerate(KWOK_NODES)]


def kwok_node(name: str, index: int, tainted: bool) -> dict:
    """One kwok node (also the scale benchmark's extra ones), in zone `zone-<index>`."""
    capacity = {"cpu": "32", "memory": "256Gi", "pods": "110", "ephemeral-storage": "500Gi"}
    return {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {KWOK_NODE_ANNOTATION[0]: KWOK_NODE_ANNOTATION[1],
                            "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {
                "kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64", "type": "kwok",
                "topology.kubernetes.io/zone": f"zone-{index}",
            },
        },
        "spec": {"taints": [KWOK_NODE_TAINT] if tainted else []},
        "status": {"capacity": capacity, "allocatable": capacity,
                   "nodeInfo": {"architecture": "amd64", "operatingSystem": "linux",
                                "kubeletVersion": build.KUBERNETES_VERSION}},
    }

"""The real node: containerd (CRI) + runc, kubelet, kube-proxy and the CNI bridge.

- containerd and runc come from Debian; containerd's root, state, socket and config are under
  `.lab/cluster/node/`. Its CRI plugin sets `restrict_oom_score_adj = true` (no process on
  these machines may lower its oom_score_adj, which makes runc fail every pod sandbox
  otherwise) and uses the local pause image as sandbox image.
- Pod network: the CNI reference plugins from Debian (`/usr/lib/cni`): a bridge `pimlab0`
  (10.244.0.1/24, the node's InternalIP: kubelet refuses a loopback node IP) with host-local
  IPAM on 10.244.0.0/24, and portmap. Pods get routes to the pod and Service CIDRs only, no
  default route; nothing is masqueraded and IP forwarding is not switched on: pod and Service
  traffic stays on this machine.
- Pods reach the apiserver (which listens on loopback only) at the `kubernetes` Service
  address: one DNAT rule of ours sends 10.96.0.1:443 from the pod CIDR to 127.0.0.1 (allowed by
  `route_localnet` on the bridge alone).
- kubelet: cgroupfs driver, a client certificate for `system:node:pimlab-node`, webhook
  authorization, the node registered with the taint and label of `layout.REAL_NODE_*`.
- kube-proxy: iptables mode, NodePorts on the bridge address only.

`probe()` says why real containers cannot run on this machine (or None), `NodeRunner` starts
and checks the node; `teardown` removes it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import yaml

from pimlab.cluster import images
from pimlab.cluster.handle import write_kubeconfig
from pimlab.cluster.layout import (
    BRIDGE, CLUSTER_DNS_IP, CLUSTER_DOMAIN, KUBE_PROXY_HEALTHZ_PORT, KUBE_PROXY_METRICS_PORT,
    KUBELET_HEALTHZ_PORT, KUBELET_PORT, KUBERNETES_SERVICE_IP, NODE_IP, NODE_NAME, POD_CIDR,
    REAL_NODE_LABEL, REAL_NODE_TAINT, SERVICE_CIDR, Layout,
)
from pimlab.cluster.pki import CertificateAuthority, KeyPair
from pimlab.cluster.procs import Component, http_ok, listening
from pimlab.cluster.progress import Progress

CNI_BIN_DIR = Path("/usr/lib/cni")
CONTAINERD = Path("/usr/bin/containerd")
CTR = Path("/usr/bin/ctr")
CNI_NETWORK = "pimlab"
CLOSED_REGISTRY = "http://127.0.0.1:9"  # the discard port: nothing listens there
START_ORDER = ("containerd", "kubelet", "kube-proxy")
# Our own iptables chain (nat table): pods -> kubernetes Service -> apiserver on loopback.
APISERVER_CHAIN = "PIMLAB-APISERVER"
# Where a machine-wide claim on the real node is kept: one real node per machine.
OWNER_FILE = Path("/run/pimlab/real-node.owner")

# What a real node needs from the machine, with the Debian package that brings it.
REQUIRED = {
    "containerd": ("/usr/bin/containerd", "containerd"),
    "containerd-shim-runc-v2": ("/usr/bin/containerd-shim-runc-v2", "containerd"),
    "ctr": ("/usr/bin/ctr", "containerd"),
    "runc": ("/usr/sbin/runc", "runc"),
    "CNI bridge plugin": (str(CNI_BIN_DIR / "bridge"), "containernetworking-plugins"),
    "CNI host-local plugin": (str(CNI_BIN_DIR / "host-local"), "containernetworking-plugins"),
    "CNI portmap plugin": (str(CNI_BIN_DIR / "portmap"), "containernetworking-plugins"),
    "CNI loopback plugin": (str(CNI_BIN_DIR / "loopback"), "containernetworking-plugins"),
    "iptables": ("/usr/sbin/iptables", "iptables"),
    "conntrack": ("/usr/sbin/conntrack", "conntrack"),
    "ip": ("/usr/sbin/ip", "iproute2"),
}


# --------------------------------------------------------------------------- the probe


def _runc_runs_a_container() -> str | None:
    """Run /bin/true in a trivial container (the host's /usr bind-mounted read-only)."""
    runc = REQUIRED["runc"][0]
    with tempfile.TemporaryDirectory(prefix="pimlab-probe-") as bundle:
        rootfs = Path(bundle) / "rootfs"
        rootfs.mkdir()
        (rootfs / "usr").mkdir()
        for link in ("bin", "lib", "lib64", "sbin"):
            if Path("/", link).is_symlink():
                (rootfs / link).symlink_to(os.readlink(Path("/", link)))
        proc = subprocess.run([runc, "spec"], cwd=bundle, capture_output=True, text=True)
        if proc.returncode != 0:
            return f"`runc spec` failed: {proc.stderr.strip()}"
        spec_path = Path(bundle) / "config.json"
        spec = json.loads(spec_path.read_text())
        spec["process"]["terminal"] = False
        spec["process"]["args"] = ["/bin/true"]
        spec["root"] = {"path": "rootfs", "readonly": True}
        spec["mounts"].append({"destination": "/usr", "type": "bind", "source": "/usr",
                               "options": ["rbind", "ro"]})
        spec_path.write_text(json.dumps(spec))
        name = f"pimlab-probe-{os.getpid()}"
        try:
            proc = subprocess.run([runc, "--root", str(Path(bundle) / "state"), "run", name],
                                  cwd=bundle, capture_output=True, text=True, timeout=30,
                                  stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            return "runc did not run a trivial container within 30 s"
        finally:
            subprocess.run([runc, "--root", str(Path(bundle) / "state"), "delete", "--force", name],
                           capture_output=True)
        if proc.returncode != 0:
            return ("runc cannot start a trivial container here: "
                    f"{(proc.stderr or proc.stdout).strip().splitlines()[-1:]}")
    return None


def probe() -> str | None:
    """Why real containers cannot run on this machine, or None when they can."""
    if os.geteuid() != 0:
        return "a real node needs root (containerd, runc, network namespaces, iptables)"
    missing = sorted({package for _, (path, package) in REQUIRED.items() if not Path(path).exists()})
    if missing:
        return "missing Debian packages: " + " ".join(missing) + " (`make deps` installs them)"
    if not Path("/sys/fs/cgroup/memory").is_dir() and not Path("/sys/fs/cgroup/cgroup.controllers").exists():
        return "no memory cgroup is mounted under /sys/fs/cgroup"
    if not Path("/proc/sys/net/bridge").is_dir():
        return "the kernel has no bridge netfilter (/proc/sys/net/bridge is missing)"
    return _runc_runs_a_container()


def owner() -> str | None:
    """The working tree whose real node runs on this machine, if any."""
    try:
        return OWNER_FILE.read_text().strip() or None
    except OSError:
        return None


def busy_reason(layout: Layout) -> str | None:
    """Why this tree cannot have the machine's one real node now (another tree holds it)."""
    holder = owner()
    if holder and holder != str(layout.root):
        holder_layout = Layout(Path(holder))
        try:
            pid = int(holder_layout.pid("kubelet").read_text())
            os.kill(pid, 0)
        except (OSError, ValueError):
            pid = None
        if pid:
            return f"the real node of {holder} runs on this machine (one real node per machine)"
    # read from /proc, never by connecting: the node address exists only with the bridge
    if listening(KUBELET_PORT) or listening(KUBELET_HEALTHZ_PORT):
        return f"kubelet's port {KUBELET_PORT} or {KUBELET_HEALTHZ_PORT} is in use by another program"
    return None


# --------------------------------------------------------------------------- setup


def _run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(args), capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed: {proc.stderr.strip()}")
    return proc


def ensure_bridge() -> None:
    """The bridge exists before kubelet starts, so its address can be the node IP."""
    if _run("ip", "link", "show", BRIDGE, check=False).returncode != 0:
        _run("ip", "link", "add", BRIDGE, "type", "bridge")
    addresses = _run("ip", "-o", "-4", "addr", "show", "dev", BRIDGE).stdout
    prefix = POD_CIDR.split("/")[1]
    if f"{NODE_IP}/{prefix}" not in addresses:
        _run("ip", "addr", "add", f"{NODE_IP}/{prefix}", "dev", BRIDGE)
    _run("ip", "link", "set", BRIDGE, "up")
    # Only DNAT'd packets to the apiserver are let through to 127.0.0.1, and only on the bridge.
    Path(f"/proc/sys/net/ipv4/conf/{BRIDGE}/route_localnet").write_text("1")


def ensure_apiserver_dnat(apiserver_port: int) -> None:
    rule = ["-s", POD_CIDR, "-d", f"{KUBERNETES_SERVICE_IP}/32", "-p", "tcp", "--dport", "443",
            "-j", "DNAT", "--to-destination", f"127.0.0.1:{apiserver_port}"]
    if _run("iptables", "-t", "nat", "-S", APISERVER_CHAIN, check=False).returncode != 0:
        _run("iptables", "-t", "nat", "-N", APISERVER_CHAIN)
    _run("iptables", "-t", "nat", "-F", APISERVER_CHAIN)
    _run("iptables", "-t", "nat", "-A", APISERVER_CHAIN, *rule)
    jump = ["PREROUTING", "-j", APISERVER_CHAIN]
    if _run("iptables", "-t", "nat", "-C", *jump, check=False).returncode != 0:
        # first, so kube-proxy's own rule for the Service (which has no endpoints) never sees it
        _run("iptables", "-t", "nat", "-I", *jump[:1], "1", *jump[1:])


def cni_conflist(layout: Layout) -> dict:
    return {
        "cniVersion": "1.0.0",
        "name": CNI_NETWORK,
        "plugins": [
            {
                "type": "bridge", "bridge": BRIDGE, "isGateway": True, "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local", "dataDir": str(layout.cni_ipam_dir),
                    "ranges": [[{"subnet": POD_CIDR, "gateway": NODE_IP}]],
                    # the pod and Service CIDRs only: no default route, nothing leaves the machine
                    "routes": [{"dst": SERVICE_CIDR}],
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }


def containerd_config(layout: Layout, sandbox_image: str) -> str:
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    return f"""# Written by pimlab (pimlab/cluster/node.py) for the lab's real node.
version = 2
root = "{layout.containerd_root}"
state = "{layout.containerd_state}"
disabled_plugins = ["io.containerd.internal.v1.opt", "io.containerd.snapshotter.v1.aufs",
                    "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
                    "io.containerd.snapshotter.v1.devmapper"]

[grpc]
  address = "{layout.containerd_socket}"

[debug]
  address = ""

[metrics]
  address = ""

[{cri}]
  sandbox_image = "{sandbox_image}"
  # no process here may lower its oom_score_adj: without this runc fails every sandbox
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  disable_apparmor = true
  enable_selinux = false

[{cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"

[{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[{cri}.containerd.runtimes.runc.options]
  SystemdCgroup = false
  BinaryName = "{REQUIRED['runc'][0]}"
  Root = "{layout.containerd_state / 'runc'}"

# Image pulls never leave the machine: every registry host resolves to a closed loopback port,
# so a pod naming an image that was not imported fails at once (ErrImagePull) instead.
[{cri}.registry]
  config_path = "{layout.containerd_registry_config}"

[{cri}.cni]
  bin_dir = "{CNI_BIN_DIR}"
  conf_dir = "{layout.cni_conf_dir}"
  max_conf_num = 1
"""


def kubelet_config(layout: Layout, ca: Path, serving: KeyPair) -> dict:
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": NODE_IP, "port": KUBELET_PORT, "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1", "healthzPort": KUBELET_HEALTHZ_PORT,
        "tlsCertFile": str(serving.cert), "tlsPrivateKeyFile": str(serving.key),
        "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": True},
                           "x509": {"clientCAFile": str(ca)}},
        "authorization": {"mode": "Webhook"},
        "cgroupDriver": "cgroupfs",
        "containerRuntimeEndpoint": f"unix://{layout.containerd_socket}",
        "imageServiceEndpoint": f"unix://{layout.containerd_socket}",
        "failSwapOn": False,
        "clusterDNS": [CLUSTER_DNS_IP], "clusterDomain": CLUSTER_DOMAIN,
        # pods resolve cluster names only: no upstream resolver, no outbound network
        "resolvConf": str(layout.node / "resolv.conf"),
        "podCIDR": POD_CIDR,
        "podLogsDir": str(layout.pod_logs),
        "volumePluginDir": str(layout.node / "volume-plugins"),
        "registerWithTaints": [REAL_NODE_TAINT],
        # the lab's images are imported, never pulled: image GC must not delete them
        "imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99,
        "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%",
                         "nodefs.inodesFree": "1%", "imagefs.available": "1%"},
        "serializeImagePulls": False,
        "maxPods": 110,
        "nodeStatusReportFrequency": "10s",
        "syncFrequency": "10s",
        "fileCheckFrequency": "10s",
    }


def kube_proxy_config(layout: Layout, kubeconfig: Path) -> dict:
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "mode": "iptables",
        "clientConnection": {"kubeconfig": str(kubeconfig)},
        "hostnameOverride": NODE_NAME,
        "clusterCIDR": POD_CIDR,
        "bindAddress": "127.0.0.1",
        "healthzBindAddress": f"127.0.0.1:{KUBE_PROXY_HEALTHZ_PORT}",
        "metricsBindAddress": f"127.0.0.1:{KUBE_PROXY_METRICS_PORT}",
        "nodePortAddresses": [f"{NODE_IP}/32"],
        # leave the machine's conntrack sysctls alone
        "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s",
                      "tcpCloseWaitTimeout": "0s"},
    }


class NodeRunner:
    """Writes the node's configuration and says how to start its three processes."""

    def __init__(self, layout: Layout):
        self.layout = layout

    def credentials(self) -> dict[str, KeyPair]:
        ca = CertificateAuthority(self.layout.pki)
        return {
            "kubelet": ca.issue("kubelet", f"system:node:{NODE_NAME}", "system:nodes"),
            "kubelet-serving": ca.issue("kubelet-serving", NODE_NAME, client=False,
                                        server_names=(NODE_IP, NODE_NAME)),
            "kube-proxy": ca.issue("kube-proxy", "system:kube-proxy"),
        }

    def prepare(self, sandbox_image: str) -> None:
        lay = self.layout
        for directory in (lay.containerd_root, lay.containerd_state, lay.kubelet_dir,
                          lay.cni_conf_dir, lay.cni_ipam_dir, lay.pod_logs, lay.volumes):
            directory.mkdir(parents=True, exist_ok=True)
        lay.containerd_config.write_text(containerd_config(lay, sandbox_image))
        default_hosts = lay.containerd_registry_config / "_default"
        default_hosts.mkdir(parents=True, exist_ok=True)
        (default_hosts / "hosts.toml").write_text(
            f'# every registry: a closed port on loopback (nothing is pulled from outside)\n'
            f'server = "{CLOSED_REGISTRY}"\n\n[host."{CLOSED_REGISTRY}"]\n'
            '  capabilities = ["pull", "resolve"]\n')
        (lay.cni_conf_dir / "10-pimlab.conflist").write_text(json.dumps(cni_conflist(lay), indent=2))
        (lay.node / "resolv.conf").write_text(
            f"# pods resolve {CLUSTER_DOMAIN} names through the cluster DNS only\n")
        OWNER_FILE.parent.mkdir(parents=True, exist_ok=True)
        OWNER_FILE.write_text(str(lay.root))
        ensure_bridge()
        ensure_apiserver_dnat(lay.ports.apiserver)

    def containerd(self) -> Component:
        lay = self.layout
        return Component(
            "containerd", CONTAINERD, ["--config", str(lay.containerd_config)],
            lambda: lay.containerd_socket.exists() and subprocess.run(
                [str(CTR), "--address", str(lay.containerd_socket), "version"],
                capture_output=True).returncode == 0,
            timeout=30,
        )

    def kubelet_and_proxy(self, ca: Path) -> list[Component]:
        lay = self.layout
        creds = self.credentials()
        kubelet_kubeconfig = lay.kubeconfigs / "kubelet.kubeconfig"
        proxy_kubeconfig = lay.kubeconfigs / "kube-proxy.kubeconfig"
        write_kubeconfig(kubelet_kubeconfig, lay.server, ca, creds["kubelet"], f"system:node:{NODE_NAME}")
        write_kubeconfig(proxy_kubeconfig, lay.server, ca, creds["kube-proxy"], "system:kube-proxy")
        lay.kubelet_config.write_text(yaml.safe_dump(kubelet_config(lay, ca, creds["kubelet-serving"])))
        lay.kube_proxy_config.write_text(yaml.safe_dump(kube_proxy_config(lay, proxy_kubeconfig)))
        # iptables, conntrack and the CNI plugins are looked up on PATH
        env = {"PATH": f"/usr/sbin:/usr/bin:/sbin:/bin:{CNI_BIN_DIR}"}
        return [
            Component(
                "kubelet", lay.bin / "kubelet",
                [f"--config={lay.kubelet_config}", f"--kubeconfig={kubelet_kubeconfig}",
                 f"--root-dir={lay.kubelet_dir}", f"--hostname-override={NODE_NAME}",
                 f"--node-ip={NODE_IP}", f"--node-labels={'='.join(REAL_NODE_LABEL)}",
                 f"--cert-dir={lay.node / 'kubelet-pki'}", "--v=1"],
                lambda: http_ok(f"http://127.0.0.1:{KUBELET_HEALTHZ_PORT}/healthz"),
                timeout=60, env=env,
            ),
            Component(
                "kube-proxy", lay.bin / "kube-proxy",
                [f"--config={lay.kube_proxy_config}", "--v=1"],
                lambda: listening(KUBE_PROXY_HEALTHZ_PORT),
                timeout=60, env=env,
            ),
        ]

    def import_images(self, names: list[str], progress: Progress) -> None:
        images.ensure(names, str(self.layout.containerd_socket), progress)


def present() -> bool:
    """Whether any piece of a real node is on this machine (the bridge or our chain)."""
    if shutil.which("ip") and _run("ip", "link", "show", BRIDGE, check=False).returncode == 0:
        return True
    return bool(shutil.which("iptables")) and _run(
        "iptables", "-t", "nat", "-S", APISERVER_CHAIN, check=False).returncode == 0

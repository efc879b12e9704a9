"""The local cluster of one working tree: the control plane, kwok nodes for scale tests and,
where the machine can run containers, one real node with cluster DNS and a default
StorageClass. With the real node, kwok and its nodes start only when something asks for a
simulated namespace (`ensure_kwok()`: the tests, the benchmarks, a locally run operator), and
its nodes carry kwok's NoSchedule taint (only pods that tolerate it are simulated there); with
kwok nodes only they start with the cluster and carry none.

A cold `up` builds what the chosen node needs, in two lanes side by side
(progress.run_lanes): the Go builds (the control plane and node, then the add-ons or kwok, then
what the caller adds, such as the monitoring stack's), and the images that need no Go build (the
sandbox, the project's image on its Debian base).

`PIMLAB_NODE` chooses the node: `real` (fail when a real node cannot run), `kwok` (kwok nodes
only) or `auto` (the default: a real node when `node.probe()` finds nothing against it, else
kwok only, saying why). `up` is idempotent; `down` stops every process it started (containerd
shims and pod processes included) and removes every trace of the cluster (teardown.py).
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Callable, Sequence

import yaml

from pimlab.cluster import addons, build, gitops_processes, images, node, teardown
from pimlab.cluster.controlplane import KWOK, START_ORDER as CONTROL_PLANE, ControlPlane
from pimlab.cluster.handle import ClusterHandle, write_kubeconfig
from pimlab.cluster.layout import HOST, NODE_NAME, Layout
from pimlab.cluster.procs import ClusterError, https_ok, pid_alive, port_open, running, start, terminate
from pimlab.cluster.progress import Progress, run_lanes
from pimlab.waiting import TimedOut, wait_for

MARKER_NAMESPACE, MARKER_NAME = "kube-system", "pimlab-control-plane"
NODE_MODES = ("auto", "real", "kwok")
#: The images the real node needs that no Go build feeds: built beside the Go builds.
IMAGES_WITHOUT_GO = (images.PAUSE_IMAGE, images.PROJECT_IMAGE)


def requested_node_mode() -> str:
    mode = os.environ.get("PIMLAB_NODE", "auto").strip().lower() or "auto"
    if mode not in NODE_MODES:
        raise ClusterError(f"PIMLAB_NODE={mode!r}: expected one of {', '.join(NODE_MODES)}")
    return mode


class LocalCluster(ClusterHandle):
    """The cluster of the working tree at `root`: starts, checks and stops its processes;
    `log` is where its progress is said (nothing when None)."""

    def __init__(self, root: Path | str = ".", log=None):
        super().__init__(Layout(Path(root).resolve()), out=log)
        self.plane = ControlPlane(self.layout)
        self.node = node.NodeRunner(self.layout)

    @property
    def ca(self) -> Path:
        return self.plane.ca

    # -- state -----------------------------------------------------------------------------

    def binaries(self) -> dict[str, Path]:
        found = {name: self.layout.bin / name for name in (*CONTROL_PLANE, KWOK)}
        found.update({"containerd": node.CONTAINERD, "kubelet": self.layout.bin / "kubelet",
                      "kube-proxy": self.layout.bin / "kube-proxy"})
        return found

    def running(self) -> dict[str, int]:
        """Components whose recorded pid still runs their binary."""
        return running(self.layout, self.binaries())

    def node_mode(self) -> str | None:
        """`real`, `kwok: <why>` or None (not started)."""
        try:
            return self.layout.node_mode_file.read_text().strip()
        except OSError:
            return None

    @property
    def real_node(self) -> bool:
        return self.node_mode() == "real"

    def expected(self) -> tuple[str, ...]:
        """What must run: beside a real node kwok is optional (ensure_kwok() starts it)."""
        return CONTROL_PLANE + (node.START_ORDER if self.real_node else (KWOK,))

    def healthy(self) -> bool:
        if not self.layout.kubeconfig.exists() or not (self.layout.pki / "admin.crt").exists():
            return False
        alive = self.running()
        if any(name not in alive for name in self.expected()):
            return False
        return https_ok(f"{self.layout.server}/readyz", self.ca, self.plane.admin)

    def foreign_reason(self) -> str | None:
        """Why the cluster behind `.lab/kubeconfig` is not this tree's own (None if it is).
        Tests create and delete objects freely, so they run only against their own cluster."""
        config = yaml.safe_load(self.layout.kubeconfig.read_text())
        servers = {c["cluster"]["server"] for c in config.get("clusters", [])}
        if servers != {self.layout.server}:
            return f"{self.layout.kubeconfig} points to {sorted(servers)}, not {self.layout.server}"
        expected = self.layout.cluster_id_file.read_text().strip() \
            if self.layout.cluster_id_file.exists() else ""
        marker = self.kubectl("get", "configmap", MARKER_NAME, "-n", MARKER_NAMESPACE,
                              "-o", "jsonpath={.data.id}", check=False).stdout.strip()
        if not expected or marker != expected:
            return (f"the cluster at {self.layout.server} does not carry this tree's "
                    f"control-plane id ({self.layout.cluster_id_file})")
        return None

    # -- up --------------------------------------------------------------------------------

    def choose_node_mode(self) -> str:
        """`real`, or `kwok: <why not real>`; raises when PIMLAB_NODE=real cannot be had."""
        mode = requested_node_mode()
        if mode == "kwok":
            return "kwok: PIMLAB_NODE=kwok"
        reason = node.probe() or node.busy_reason(self.layout)
        if reason is None:
            return "real"
        if mode == "real":
            raise ClusterError(f"PIMLAB_NODE=real, but a real node cannot run here: {reason}")
        self.say(f"no real node: {reason}; falling back to kwok nodes only "
                 "(PIMLAB_NODE=kwok says so without probing)")
        return f"kwok: {reason}"

    def up(self, real_node_builds: Sequence[Callable[[Progress], object]] = ()) -> None:
        """Start what is not running. `real_node_builds`: more Go builds (steps) the caller needs
        when the node is real, run in the Go lane of a cold start (the monitoring stack's)."""
        if self.healthy():
            self.say(f"cluster already running: {self.layout.server} "
                     f"(node: {self.node_mode()})")
            if KWOK in self.running():
                self._apply_kwok_nodes()
            self._wait_nodes_ready()
            return
        if self.running() or node.owner() == str(self.layout.root):
            self.say("a previous cluster is partly running: stopping it first")
            self.down(quiet=True)
        for port in self.layout.ports.__dict__.values():
            if port_open(port):
                raise ClusterError(
                    f"port {HOST}:{port} is already in use by another program; stop it or set "
                    "PIMLAB_PORT_OFFSET to move the control plane's ports")
        mode = self.choose_node_mode()
        self.build_for_node(mode == "real", real_node_builds)
        self._link_binaries(build.bin_dir())
        for directory in (self.layout.logs, self.layout.pids, self.layout.kubeconfigs):
            directory.mkdir(parents=True, exist_ok=True)
        self.layout.node_mode_file.write_text(mode + "\n")
        creds = self.plane.credentials()
        for component in self.plane.components(creds):
            start(self.layout, component, self.progress)
        write_kubeconfig(self.layout.kubeconfig, self.layout.server, self.ca,
                         creds["admin"], "pimlab-admin")
        self._mark_cluster()
        if mode == "real":
            self._node_up()
        else:
            self._kwok_up()
        self._wait_nodes_ready()
        self._wait_default_service_account()
        if mode == "real":
            addons.install(self)

    def build_for_node(self, real: bool, real_node_builds: Sequence[Callable[[Progress], object]] = ()) -> None:
        """What the chosen node needs, built where missing: the Go builds in one lane, the
        images that need none in another beside it (real node only)."""
        if real:
            go_lane = [build.build_step, build.addons_step, *real_node_builds]
            image_lane = [lambda progress, ref=ref: images.build_step(ref, progress) for ref in IMAGES_WITHOUT_GO]
        else:
            go_lane, image_lane = [build.build_step, build.kwok_step], []
        run_lanes(self.progress, go_lane, image_lane)

    def ensure_kwok(self) -> None:
        """kwok and its nodes, started unless kwok runs (built first if it never was): the
        nodes a simulated namespace's pods go to, also beside the real node."""
        if KWOK in self.running():
            return
        build.kwok_step(self.progress)
        self._kwok_up()
        self._wait_nodes_ready()

    def ensure_kwok_namespace(self, name: str) -> None:
        """ClusterHandle's, with kwok running to simulate the namespace's pods."""
        self.ensure_kwok()
        super().ensure_kwok_namespace(name)

    def _kwok_up(self) -> None:
        self._link(KWOK, build.kwok_binary())
        start(self.layout, self.plane.kwok(self.plane.credentials()), self.progress)
        self._apply_kwok_nodes()

    def _apply_kwok_nodes(self) -> None:
        """The kwok nodes, tainted when the real node runs beside them (also on a cluster that
        runs already: a cluster started before the taint existed gets it)."""
        nodes = self.plane.kwok_nodes(tainted=self.real_node)
        self.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(nodes))

    def _node_up(self) -> None:
        self.node.prepare(images.PAUSE_IMAGE)
        start(self.layout, self.node.containerd(), self.progress)
        try:
            self.node.import_images(list(addons.NODE_IMAGES), self.progress)
        except Exception as error:  # the image code names the failing step and its log
            raise ClusterError(f"images for the real node: {error}") from error
        for component in self.node.kubelet_and_proxy(self.ca):
            start(self.layout, component, self.progress)
        proc = self.kubectl("wait", "--for=condition=Ready", f"node/{NODE_NAME}",
                            "--timeout=90s", check=False, timeout=100)
        if proc.returncode != 0:
            raise ClusterError(f"the real node {NODE_NAME} did not become Ready: "
                               f"{proc.stderr.strip()}; see {self.layout.log('kubelet')}")

    def _link_binaries(self, bin_dir: Path) -> None:
        for name in build.BINARIES:
            self._link(name, bin_dir / name)

    def _link(self, name: str, binary: Path) -> None:
        self.layout.bin.mkdir(parents=True, exist_ok=True)
        link = self.layout.bin / name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(binary)

    def _mark_cluster(self) -> None:
        """A ConfigMap holding this cluster's id: the tests refuse a cluster without it."""
        cluster_id = self.layout.cluster_id_file.read_text().strip() \
            if self.layout.cluster_id_file.exists() else uuid.uuid4().hex
        self.layout.cluster_id_file.write_text(cluster_id)
        marker = {"apiVersion": "v1", "kind": "ConfigMap",
                  "metadata": {"name": MARKER_NAME, "namespace": MARKER_NAMESPACE},
                  "data": {"id": cluster_id}}
        self.kubectl("apply", "-f", "-", input=yaml.safe_dump(marker))

    def _wait_nodes_ready(self, timeout: int = 90) -> None:
        proc = self.kubectl("wait", "--for=condition=Ready", "node", "--all",
                            f"--timeout={timeout}s", check=False, timeout=timeout + 10)
        if proc.returncode != 0:
            logs = self.layout.log("kwok")
            if self.real_node:
                logs = f"{logs} and {self.layout.log('kubelet')}"
            raise ClusterError(f"nodes did not become Ready: {proc.stderr.strip()}; see {logs}")

    def _wait_default_service_account(self, timeout: float = 60) -> None:
        """Pods can only be created once the controller-manager made the default SA."""
        try:
            wait_for(lambda: self.kubectl("get", "serviceaccount", "default", "-n", "default",
                                          check=False).returncode == 0, timeout=timeout)
        except TimedOut:
            raise ClusterError(
                "the controller-manager did not create the default ServiceAccount; "
                f"see {self.layout.log('kube-controller-manager')}") from None

    # -- down ------------------------------------------------------------------------------

    def _stop(self, name: str, quiet: bool) -> None:
        binary = self.binaries()[name]
        try:
            pid = int(self.layout.pid(name).read_text())
        except (OSError, ValueError):
            return
        if not pid_alive(pid, binary):
            return
        if not quiet:
            self.say(f"stopping {name} (pid {pid})")
        terminate(pid, binary)

    def down(self, quiet: bool = False) -> None:
        """Stop every component this tree started, take the node apart, delete the state."""
        gitops_processes.stop(self.layout, (lambda _: None) if quiet else self.say)
        if self.real_node or node.owner() == str(self.layout.root) or \
                self.layout.node.exists():
            teardown.teardown_node(self.layout, lambda name: self._stop(name, quiet))
        for name in (KWOK, *reversed(CONTROL_PLANE)):
            self._stop(name, quiet)
        for path in (self.layout.state, self.layout.bin):
            shutil.rmtree(path, ignore_errors=True)
        self.layout.kubeconfig.unlink(missing_ok=True)

    # -- status ----------------------------------------------------------------------------

    def status(self) -> str:
        alive = self.running()
        lines = []
        for name in (*CONTROL_PLANE, KWOK, *node.START_ORDER):
            state = f"running pid {alive[name]}" if name in alive else "stopped"
            lines.append(f"{name:<24} {state}")
        mode = self.node_mode()
        lines.append(f"{'node':<24} {mode or 'not started'}")
        if self.healthy():
            lines.append("")
            lines.append(self.kubectl("get", "nodes", "-o", "wide").stdout.rstrip())
            if self.real_node:
                lines.append("")
                lines.append(self.kubectl("get", "pods", "-A", "-o", "wide",
                                          f"--field-selector=spec.nodeName={NODE_NAME}",
                                          check=False).stdout.rstrip())
        return "\n".join(lines)

    def node_summary(self) -> dict:
        """The real node as the apiserver sees it (conditions, addresses, taints)."""
        proc = self.kubectl("get", "node", NODE_NAME, "-o", "json", check=False)
        if proc.returncode != 0:
            return {}
        obj = json.loads(proc.stdout)
        return {
            "conditions": {c["type"]: c["status"] for c in obj["status"].get("conditions", [])},
            "addresses": obj["status"].get("addresses", []),
            "taints": obj["spec"].get("taints", []),
        }

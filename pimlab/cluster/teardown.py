"""Take the local cluster down and leave nothing behind.

The real node leaves more than processes: containerd's shims and the pods' processes (children
of the shims, in kubelet's `kubepods` cgroups), mounts below `.lab/` (kubelet's bind mount of
its root dir, overlay root filesystems, sandbox shm, network namespaces, volume mounts), the
pods' veths and the bridge, iptables chains (kube-proxy's and kubelet's `KUBE-*`, portmap's
`CNI-*`, our `PIMLAB-*`), kubelet's cgroups, CNI's result cache and the shims' sockets. Each
step here is idempotent, so `down` also cleans up after a crashed `up`.
"""

from __future__ import annotations

import ctypes
import os
import shlex
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Callable, Iterable

from pimlab.cluster import node
from pimlab.cluster.layout import BRIDGE, Layout

CHAIN_PREFIXES = ("KUBE-", "CNI-", "PIMLAB-")
SHIM = Path("/usr/bin/containerd-shim-runc-v2")
SHIM_SOCKETS = Path("/run/containerd/s")
CNI_CACHE = Path("/var/lib/cni/results")
# Directories that kubelet, libcni and the shims make outside `.lab/`; removed when empty.
MACHINE_DIRS = (Path("/var/lib/cni/results"), Path("/var/lib/cni"), SHIM_SOCKETS,
                Path("/run/containerd/fifo"), Path("/run/containerd/runc/k8s.io"),
                Path("/run/containerd/runc"), Path("/run/containerd"),
                Path("/var/log/containers"), node.OWNER_FILE.parent)
CONTAINER_LOG_LINKS = Path("/var/log/containers")
MNT_DETACH = 2


# --------------------------------------------------------------------------- processes


def _processes() -> dict[int, tuple[int, list[str]]]:
    """pid -> (parent pid, argv) of every process."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue
        found[int(entry.name)] = (ppid, [a.decode(errors="replace") for a in argv if a])
    return found


def shim_pids(layout: Layout) -> list[int]:
    """containerd shims that serve this tree's containerd."""
    socket = str(layout.containerd_socket)
    pids = []
    for pid, (_, argv) in _processes().items():
        if argv and Path(argv[0]).name == SHIM.name and socket in argv:
            pids.append(pid)
    return pids


def _descendants(roots: Iterable[int]) -> set[int]:
    procs = _processes()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in procs.items():
        children.setdefault(ppid, []).append(pid)
    found, stack = set(), list(roots)
    while stack:
        pid = stack.pop()
        for child in children.get(pid, ()):
            if child not in found:
                found.add(child)
                stack.append(child)
    return found


def kubepods_cgroups(base: Path = Path("/sys/fs/cgroup")) -> list[Path]:
    """Every `kubepods` cgroup directory kubelet made, in every mounted hierarchy (also what
    tests/benchmarks/pod_cpu.py reads the pods' CPU time from)."""
    found = []
    for hierarchy in [base, *(p for p in base.iterdir() if p.is_dir())] if base.is_dir() else []:
        candidate = hierarchy / "kubepods"
        if candidate.is_dir():
            found.append(candidate)
    return found


def _pod_pids() -> set[int]:
    pids = set()
    for root in kubepods_cgroups():
        for procs in root.rglob("cgroup.procs"):
            try:
                pids.update(int(p) for p in procs.read_text().split())
            except (OSError, ValueError):
                continue
    return pids


def _kill_all(pids: set[int], timeout: float = 10) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() and not _zombie(p) for p in pids):
        time.sleep(0.05)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def stop_pods(layout: Layout) -> None:
    """Kill every pod process and every shim of this tree's containerd."""
    shims = shim_pids(layout)
    _kill_all(_descendants(shims) | _pod_pids())
    _kill_all(set(shims))


def _cgroup_tree(root: Path) -> list[Path]:
    """`root` and every cgroup below it, deepest first. The kernel removes a cgroup whose last
    process exits while we look: a directory gone between listing and reading is skipped."""
    found = []
    for parent, directories, _ in os.walk(root, onerror=lambda error: None):
        found += [Path(parent) / d for d in directories]
    return sorted(found, key=lambda p: len(p.parts), reverse=True) + [root]


def remove_cgroups() -> None:
    for root in kubepods_cgroups():
        for directory in _cgroup_tree(root):
            try:
                directory.rmdir()
            except OSError:
                pass


# --------------------------------------------------------------------------- mounts


def mounts_below(path: Path) -> list[str]:
    """Mount points at or below `path`, deepest first."""
    prefix = str(path).rstrip("/")
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].encode().decode("unicode_escape")
        if point == prefix or point.startswith(prefix + "/"):
            found.append(point)
    return sorted(set(found), key=lambda p: p.count("/"), reverse=True)


def unmount_below(path: Path) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    for _ in range(5):  # a bind mount may be stacked on itself (kubelet's root dir)
        points = mounts_below(path)
        if not points:
            return
        for point in points:
            if libc.umount2(point.encode(), 0) != 0:
                libc.umount2(point.encode(), MNT_DETACH)


# --------------------------------------------------------------------------- network


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True)


def remove_bridge() -> None:
    if not shutil.which("ip") or _ip("link", "show", BRIDGE).returncode != 0:
        return
    for line in _ip("-o", "link", "show", "master", BRIDGE).stdout.splitlines():
        name = line.split(":")[1].strip().split("@")[0]
        _ip("link", "del", name)
    _ip("link", "del", BRIDGE)


def our_chains() -> dict[tuple[str, str], list[str]]:
    """(tool, table) -> our chains in it."""
    found = {}
    for tool in ("iptables", "ip6tables"):
        if not shutil.which(tool):
            continue
        for table in ("filter", "nat", "mangle"):
            out = subprocess.run([tool, "-w", "-t", table, "-S"], capture_output=True, text=True).stdout
            chains = [line.split()[1] for line in out.splitlines()
                      if line.startswith("-N ") and line.split()[1].startswith(CHAIN_PREFIXES)]
            if chains:
                found[(tool, table)] = chains
    return found


def remove_chains() -> None:
    for (tool, table), chains in our_chains().items():
        rules = subprocess.run([tool, "-w", "-t", table, "-S"], capture_output=True, text=True).stdout
        for line in rules.splitlines():
            words = shlex.split(line)  # comments are quoted: "kubernetes service portals"
            if words[0] == "-A" and not words[1].startswith(CHAIN_PREFIXES) and \
                    "-j" in words and words[words.index("-j") + 1] in chains:
                subprocess.run([tool, "-w", "-t", table, "-D", *words[1:]], capture_output=True)
        for chain in chains:
            subprocess.run([tool, "-w", "-t", table, "-F", chain], capture_output=True)
        for chain in chains:
            subprocess.run([tool, "-w", "-t", table, "-X", chain], capture_output=True)


def remove_leftover_files(layout: Layout) -> None:
    if CNI_CACHE.is_dir():  # libcni's results of our network and of containerd's loopback
        for pattern in (f"{node.CNI_NETWORK}-*", "cni-loopback-*"):
            for entry in CNI_CACHE.glob(pattern):
                entry.unlink(missing_ok=True)
    if CONTAINER_LOG_LINKS.is_dir():
        for link in CONTAINER_LOG_LINKS.iterdir():
            if link.is_symlink() and os.readlink(link).startswith(str(layout.pod_logs)):
                link.unlink()
    if SHIM_SOCKETS.is_dir():
        bound = {line.split()[-1] for line in Path("/proc/net/unix").read_text().splitlines()[1:]
                 if len(line.split()) > 7}
        for sock in SHIM_SOCKETS.iterdir():
            if str(sock) not in bound and f"@{sock}" not in bound:
                sock.unlink(missing_ok=True)
    if node.owner() == str(layout.root):
        node.OWNER_FILE.unlink(missing_ok=True)
    for directory in MACHINE_DIRS:
        try:
            directory.rmdir()
        except OSError:
            pass  # not there, or not empty: someone else's


# --------------------------------------------------------------------------- all of it


def teardown_node(layout: Layout, stop: Callable[[str], None]) -> None:
    """Stop the node's processes (`stop(name)` stops one started component), its pods, and
    remove everything of it from the machine. Safe when nothing of it runs."""
    mine = node.owner() in (None, str(layout.root))
    for name in ("kube-proxy", "kubelet"):
        stop(name)
    stop_pods(layout)
    stop("containerd")
    unmount_below(layout.lab)
    if mine:
        remove_cgroups()
        remove_bridge()
        remove_chains()
    remove_leftover_files(layout)


def leftovers(layout: Layout) -> list[str]:
    """What of a real node is still on this machine (empty when `down` did its job)."""
    found = []
    if shim_pids(layout):
        found.append(f"containerd shims: {shim_pids(layout)}")
    if _pod_pids():
        found.append(f"pod processes: {sorted(_pod_pids())}")
    if mounts_below(layout.lab):
        found.append(f"mounts: {mounts_below(layout.lab)}")
    if shutil.which("ip") and _ip("link", "show", BRIDGE).returncode == 0:
        found.append(f"bridge {BRIDGE}")
    if shutil.which("ip"):
        veths = [line.split(":")[1].strip() for line in _ip("-o", "link", "show", "type", "veth").stdout.splitlines()]
        if veths:
            found.append(f"veths: {veths}")
    for (tool, table), chains in our_chains().items():
        found.append(f"{tool} {table} chains: {chains}")
    if kubepods_cgroups():
        found.append(f"cgroups: {[str(p) for p in kubepods_cgroups()]}")
    if CNI_CACHE.is_dir():
        cached = [p.name for p in CNI_CACHE.iterdir()
                  if p.name.startswith((f"{node.CNI_NETWORK}-", "cni-loopback-"))]
        if cached:
            found.append(f"CNI results: {cached}")
    if SHIM_SOCKETS.is_dir() and any(SHIM_SOCKETS.iterdir()):
        found.append(f"shim sockets: {sorted(p.name for p in SHIM_SOCKETS.iterdir())}")
    return found

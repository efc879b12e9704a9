"""CPU time of the real node's pods and of the whole machine, read from the host.

A pod's CPU is its cgroup's usage under kubelet's `kubepods` tree, not the sum of its processes
in /proc: a cgroup keeps what exited processes and threads spent (a PostgreSQL backend that is
gone, a timer thread per transaction), and has every container of the pod. cgroup v1 (what
these machines mount) keeps it in `cpuacct.usage` (ns), cgroup v2 in `cpu.stat`'s `usage_usec`.
"""

from __future__ import annotations

import os
from pathlib import Path

from pimlab.cluster.teardown import kubepods_cgroups


def parse_cpu_stat(text: str) -> int | None:
    """`usage_usec` of a cgroup v2 `cpu.stat`; None when absent (v1's `cpu` controller has a
    cpu.stat with throttling counts only)."""
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == "usage_usec":
            return int(value)
    return None


def usage_usec(directory: Path) -> int | None:
    """The cgroup's CPU time in microseconds, whichever version it is; None if it has none."""
    try:
        return int((directory / "cpuacct.usage").read_text()) // 1000
    except FileNotFoundError:
        pass
    try:
        return parse_cpu_stat((directory / "cpu.stat").read_text())
    except FileNotFoundError:
        return None


def pod_cgroup(uid: str, roots: list[Path] | None = None) -> Path | None:
    """The pod's cgroup that accounts CPU: `pod<uid>` (cgroupfs driver) or `...pod<uid_>.slice`
    (systemd driver), one or two levels under a `kubepods` root (the QoS class level between)."""
    marks = (f"pod{uid}", f"pod{uid.replace('-', '_')}")
    for root in kubepods_cgroups() if roots is None else roots:
        for level in (root.glob("*"), root.glob("*/*")):
            for candidate in level:
                name = candidate.name.removesuffix(".slice")
                if candidate.is_dir() and name.endswith(marks) and usage_usec(candidate) is not None:
                    return candidate
    return None


def sample(cgroups: dict[str, Path]) -> dict[str, int | None]:
    """Each pod's CPU time now (None once its cgroup is gone: the pod was replaced)."""
    out = {}
    for pod, directory in cgroups.items():
        try:
            out[pod] = usage_usec(directory)
        except (OSError, ValueError):
            out[pod] = None
    return out


def spent_by_role(before: dict[str, int | None], after: dict[str, int | None],
                  roles: dict[str, str]) -> dict[str, float | None]:
    """CPU milliseconds spent between two samples by each role (pods of one role summed) and by
    all pods (`pods`); a role with a pod that was replaced in between is None (its new pod's
    cgroup was not measured), and then so is `pods`."""
    spent: dict[str, float | None] = {}
    for pod, role in roles.items():
        a, b = before.get(pod), after.get(pod)
        delta = None if a is None or b is None or b < a else (b - a) / 1000.0
        if role not in spent:
            spent[role] = delta
        elif spent[role] is not None:
            spent[role] = None if delta is None else spent[role] + delta
    known = [v for v in spent.values() if v is not None]
    spent["pods"] = sum(known) if len(known) == len(spent) else None
    return spent


def scaled(spent: dict[str, float | None], divisor: float, digits: int = 3) -> dict[str, float | None]:
    """`spent_by_role` divided: by the requests (ms per request) or by the wall milliseconds (cores)."""
    return {role: None if ms is None else round(ms / divisor, digits) for role, ms in spent.items()}


def machine_jiffies(stat_text: str) -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs from /proc/stat's first line; busy leaves out idle and
    iowait."""
    fields = [int(v) for v in stat_text.splitlines()[0].split()[1:]]
    total = sum(fields[:8])  # user nice system idle iowait irq softirq steal (guest is in user)
    return total - fields[3] - fields[4], total


def busy_cores(before: tuple[int, int], after: tuple[int, int]) -> float:
    """How many cores the machine kept busy between two `machine_jiffies` readings."""
    busy, total = after[0] - before[0], after[1] - before[1]
    return round(busy / total * (os.cpu_count() or 1), 2) if total > 0 else 0.0

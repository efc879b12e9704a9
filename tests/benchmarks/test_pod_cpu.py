"""pod_cpu.py's readers on made-up cgroup trees: the gateway benchmark's CPU per booking by pod is
only as right as finding each pod's cgroup and reading the right counter in it."""

from __future__ import annotations

from pathlib import Path

import pytest

from pimlab.cluster.teardown import kubepods_cgroups
from pod_cpu import busy_cores, machine_jiffies, parse_cpu_stat, pod_cgroup, scaled, spent_by_role, usage_usec

UID = "0b7c1f4e-2a9d-4c51-8e0f-3d6a2b9c7e11"
V2_STAT = "usage_usec 812345\nuser_usec 600000\nsystem_usec 212345\nnr_periods 0\nnr_throttled 0\nthrottled_usec 0\n"
V1_CPU_STAT = "nr_periods 0\nnr_throttled 0\nthrottled_time 0\n"


def _cgroup(path: Path, **files: str) -> Path:
    path.mkdir(parents=True)
    for name, text in files.items():
        (path / name.replace("_", ".", 1)).write_text(text)
    return path


def test_cpu_stat_usage_is_read_and_v1_cpu_stat_has_none():
    assert parse_cpu_stat(V2_STAT) == 812345
    assert parse_cpu_stat(V1_CPU_STAT) is None


def test_usage_in_microseconds_from_either_cgroup_version(tmp_path):
    assert usage_usec(_cgroup(tmp_path / "v1", cpuacct_usage="7000123456\n")) == 7000123
    assert usage_usec(_cgroup(tmp_path / "v2", cpu_stat=V2_STAT)) == 812345
    assert usage_usec(_cgroup(tmp_path / "cpu-only", cpu_stat=V1_CPU_STAT)) is None
    assert usage_usec(_cgroup(tmp_path / "none")) is None


def test_pod_cgroup_is_the_one_that_accounts_cpu(tmp_path):
    """cgroup v1 with `cpu` and `cpuacct` mounted apart (these machines): the pod's directory in
    `cpu` has throttling counts only; the one in `cpuacct` has the usage."""
    _cgroup(tmp_path / "cpu" / "kubepods" / "burstable" / f"pod{UID}", cpu_stat=V1_CPU_STAT)
    acct = _cgroup(tmp_path / "cpuacct" / "kubepods" / "burstable" / f"pod{UID}", cpuacct_usage="5000\n")
    _cgroup(tmp_path / "cpuacct" / "kubepods" / "burstable" / "pod-other", cpuacct_usage="9\n")
    roots = kubepods_cgroups(tmp_path)
    assert len(roots) == 2
    assert pod_cgroup(UID, roots) == acct
    assert pod_cgroup("not-a-pod", roots) is None


SYSTEMD_POD = f"kubepods-burstable.slice/kubepods-burstable-pod{UID.replace('-', '_')}.slice"


@pytest.mark.parametrize("relative", [f"kubepods/pod{UID}",  # Guaranteed: no QoS level
                                      f"kubepods/{SYSTEMD_POD}"])
def test_pod_cgroup_guaranteed_and_systemd_names(tmp_path, relative):
    found = _cgroup(tmp_path / "unified" / relative, cpu_stat=V2_STAT)
    assert pod_cgroup(UID, kubepods_cgroups(tmp_path)) == found


def test_spent_sums_a_role_and_drops_a_replaced_pod():
    roles = {"gw": "gateway", "db-0": "primary", "db-1": "standbys", "db-2": "standbys", "enc": "encounter"}
    before = {"gw": 1_000, "db-0": 0, "db-1": 10_000, "db-2": 0, "enc": 500}
    after = {"gw": 201_000, "db-0": 100_000, "db-1": 30_000, "db-2": 20_000, "enc": None}
    spent = spent_by_role(before, after, roles)
    assert scaled(spent, 100) == {"gateway": 2.0, "primary": 1.0, "standbys": 0.4, "encounter": None, "pods": None}
    after["enc"] = 300_500
    spent = spent_by_role(before, after, roles)
    assert scaled(spent, 100)["pods"] == 6.4
    assert scaled(spent, 2000.0, 2) == {"gateway": 0.1, "primary": 0.05, "standbys": 0.02, "encounter": 0.15,
                                        "pods": 0.32}   # cores over a 2 s step


def test_busy_cores_leave_out_idle_and_iowait(monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    first = machine_jiffies("cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 1 2 3\n")
    second = machine_jiffies("cpu  250 0 100 1000 50 0 0 0 0 0\n")
    assert first == (150, 1000)
    assert busy_cores(first, second) == 1.0   # 200 busy of 400 jiffies on 2 cores

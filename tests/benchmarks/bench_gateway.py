"""Bookings through the gateway on the real node: `make bench-gateway` (PIMLAB_NODE=real).

bench_booking.py measures the embedded default (one process, SQLite). This measures the services
as pods, on the small lab of tests/cluster/failover_lab.py: every booking goes client (on the host)
-> the gateway's ClusterIP (kube-proxy) -> gateway pod -> encounter pod -> the Shard's `-primary`
Service -> PostgreSQL primary, acknowledged once one of its two streaming standbys has the commit
(`ANY 1`). In one run:
- the same-run floor: the gateway's `/healthz` through the same path at a fixed rate;
- the pods' idle CPU;
- bookings stepped up in rate until a step errs or falls behind (bench_booking's `keeps_up`): the
  highest rate with p99 < 50 ms, the highest rate kept up with, and at every step the CPU per
  booking of each pod (gateway, encounter, primary, standbys, the other pods) from their cgroups
  (pod_cpu.py), the client's own CPU, the load average and how many cores the machine kept busy.

Bookings spread over 8 patients (the 5 the lab seeds and the 3 it creates), 20 providers, 5
facilities and 48 clinicians: the gateway limits each user to 50 requests/s.
Not in these figures, unlike bench_booking's: the outbox relay and projection (the lab runs no
workers). Nothing is pinned: pods, client and control plane share the machine's cores, so the
busy cores and the load average say how much of it the step had.

Needs a real node; starts the cluster if none runs and stops it afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.benchmarks.real_node import failover_lab_up  # noqa: E402  (puts tests/cluster on the path)
from tests.benchmarks.sigterm import unwind_on_sigterm  # noqa: E402

from failover_lab import PODS, FailoverLab  # noqa: E402

from api_services.seed import seeded_patient_id  # noqa: E402
from tests.benchmarks.bench_booking import BAR_P99_MS, client_step, keeps_up, load, sustained  # noqa: E402
from tests.benchmarks.pod_cpu import (busy_cores, machine_jiffies, pod_cgroup, sample, scaled,  # noqa: E402
                                      spent_by_role)
from tests.benchmarks.seeded import http_request  # noqa: E402

SEEDED_PATIENTS = 5   # FailoverLab.connect seeds 5 (seed 42) and creates 3 more
USERS = 48            # 50/s each at the gateway: room for 2,400/s
ROLES = ("gateway", "encounter", "primary", "standbys", "other")


def booking_requests(lab: FailoverLab, count: int = 240) -> list[str]:
    """`count` pre-encoded POST /encounters, spread over patients, providers, facilities and users."""
    patients = [seeded_patient_id(42, i) for i in range(SEEDED_PATIENTS)] + lab.patients
    tokens = [lab.token("clinician", f"bench-clinician-{u:02d}") for u in range(USERS)]
    return [http_request("POST", "/encounters", tokens[i % USERS], {
        "patient_id": patients[i % len(patients)], "provider_id": f"prv-{i % 20 + 1:04d}",
        "facility_id": f"fac-{i % 5 + 1:03d}", "scheduled_for": "2025-06-01T09:00:00Z",
        "reason": "gateway benchmark visit"}) for i in range(count)]


def pod_roles(lab: FailoverLab) -> dict[str, tuple[str, str]]:
    """Each running pod of the lab's namespace: name -> (role, uid)."""
    items = json.loads(lab.cluster.kubectl("get", "pods", "-n", lab.namespace, "-o", "json").stdout)["items"]
    primary = lab.primary()
    found = {}
    for pod in items:
        meta = pod["metadata"]
        if meta.get("deletionTimestamp"):
            continue
        component = (meta.get("labels") or {}).get("app.kubernetes.io/component")
        if meta["name"] in PODS:
            role = "primary" if meta["name"] == primary else "standbys"
        else:
            role = component if component in ("gateway", "encounter") else "other"
        found[meta["name"]] = (role, meta["uid"])
    return found


class Meter:
    """CPU of the lab's pods (by role) and of the machine over one measured stretch."""

    def __init__(self, lab: FailoverLab):
        pods = pod_roles(lab)
        self.roles = {name: role for name, (role, _) in pods.items()}
        self.cgroups = {name: pod_cgroup(uid) for name, (_, uid) in pods.items()}
        missing = sorted(name for name, path in self.cgroups.items() if path is None)
        if missing:
            raise RuntimeError(f"no cgroup with CPU accounting found for pods {missing} under kubelet's kubepods")

    def start(self) -> None:
        self.cpu0, self.jiffies0, self.load0 = sample(self.cgroups), machine_jiffies(_proc_stat()), load()
        self.t0 = time.monotonic()

    def spent(self) -> dict[str, float | None]:
        """CPU ms by role since `start`."""
        return spent_by_role(self.cpu0, sample(self.cgroups), self.roles)

    def stop(self, step: dict, requests: int) -> dict:
        """Adds CPU ms per request and cores used by role, the machine's busy cores, the load average.
        Cores are over the load's own span when there was load (not the client's start-up)."""
        wall_ms = (time.monotonic() - self.t0) * 1000
        if step.get("achieved_rps"):
            wall_ms = min(wall_ms, step["requests"] / step["achieved_rps"] * 1000)
        spent = self.spent()
        step["pod_cpu_ms_per_request"] = scaled(spent, requests)
        step["pod_cores"] = scaled(spent, wall_ms, 2)
        step["machine_busy_cores"] = busy_cores(self.jiffies0, machine_jiffies(_proc_stat()))
        step["load_avg_1m"] = max(self.load0, load())
        return step


def _proc_stat() -> str:
    return Path("/proc/stat").read_text()


def drive(meter: Meter, host: str, port: int, rate: float, seconds: float, requests: list[str], workdir: Path) -> dict:
    meter.start()
    step = client_step(port, rate, seconds, requests, workdir, host=host, core=None)
    return meter.stop(step, step["requests"])


def idle(meter: Meter, seconds: float = 5.0) -> dict:
    """Each role's CPU with no load, in % of a core (probes, heartbeats, WAL senders)."""
    meter.start()
    time.sleep(seconds)
    return scaled(meter.spent(), seconds * 10, 2)   # ms / (s * 1000) * 100


def line(step: dict) -> str:
    """One step, readable: rate, latency, errors, CPU per request and cores by pod, client, machine."""
    cpu, cores = step["pod_cpu_ms_per_request"], step["pod_cores"]
    pods = " ".join(f"{role} {cpu.get(role)}" for role in (*ROLES, "pods") if role in cpu)
    used = " ".join(f"{role} {cores.get(role)}" for role in (*ROLES, "pods") if role in cores)
    return (f"{step['target_rps']:g}/s -> {step['achieved_rps']}/s  p50 {step['p50_ms']} ms  p99 {step['p99_ms']} ms  "
            f"errors {step['errors']}  |  CPU ms/request: {pods}  |  cores: {used}  |  client "
            f"{step['client_cpu_ms_per_request']} ms/request  |  load avg {step['load_avg_1m']}, "
            f"busy cores {step['machine_busy_cores']}")


def measure(lab: FailoverLab, workdir: Path, rates: list[float], seconds: float, healthz_rate: float) -> dict:
    url = urlsplit(lab.url)
    host, port = url.hostname, url.port or 80
    requests = booking_requests(lab)
    meter = Meter(lab)
    drive(meter, host, port, 25, 3.0, requests, workdir)  # warm-up: connections, pools, backends
    report = {"path": "client -> gateway pod -> encounter pod -> PostgreSQL primary (ANY 1 of 2 standbys)",
              "bar_p99_ms": BAR_P99_MS, "primary": lab.primary(), "pods": meter.roles,
              "idle_cpu_pct_of_core": idle(meter)}
    print(json.dumps({"idle_cpu_pct_of_core": report["idle_cpu_pct_of_core"]}), flush=True)
    health = drive(meter, host, port, healthz_rate, seconds, [http_request("GET", "/healthz")], workdir)
    report["healthz"] = health
    print(json.dumps({"healthz": health}), flush=True)
    print("healthz  " + line(health), flush=True)
    steps, best = [], None
    for rate in rates:
        time.sleep(2.0)  # the previous step's stragglers and checkpoints settle
        step = drive(meter, host, port, rate, seconds, requests, workdir)
        steps.append(step)
        print(json.dumps({"booking": step}), flush=True)
        print("booking  " + line(step), flush=True)
        if sustained(step):
            best = step
        if not keeps_up(step):
            break
    kept = [s for s in steps if keeps_up(s)]
    report.update(best_booking=best, highest_kept_up=kept[-1] if kept else None, booking_steps=steps)
    return report


def summary(report: dict) -> str:
    best, top = report["best_booking"] or {}, report["highest_kept_up"] or {}
    cpu, cores = top.get("pod_cpu_ms_per_request") or {}, top.get("pod_cores") or {}
    health = report["healthz"]["pod_cpu_ms_per_request"]
    by_pod = ", ".join(f"{role} {cpu.get(role)} ({cores.get(role)} cores)" for role in (*ROLES, "pods") if role in cpu)
    return (f"GATEWAY bookings through the gateway on the real node: p99 < {BAR_P99_MS:g} ms up to "
            f"{best.get('achieved_rps')}/s (p99 {best.get('p99_ms')} ms); kept up to {top.get('achieved_rps')}/s "
            f"(p99 {top.get('p99_ms')} ms); CPU ms/booking there by pod: {by_pod}; client "
            f"{top.get('client_cpu_ms_per_request')} ms/booking; /healthz floor at "
            f"{report['healthz']['achieved_rps']}/s: "
            f"gateway {health.get('gateway')} ms, all pods {health.get('pods')} ms/request; load avg "
            f"{top.get('load_avg_1m')}, busy cores {top.get('machine_busy_cores')} of {os.cpu_count()}")


def main(rates: list[float], seconds: float, healthz_rate: float) -> dict:
    started = time.monotonic()
    with failover_lab_up("bench-gateway", "bench-gw") as (lab, _cluster, workdir):
        print(f"lab up after {time.monotonic() - started:.0f} s; gateway {lab.url}", flush=True)
        report = measure(lab, workdir, rates, seconds, healthz_rate)
    report["wall_seconds"] = round(time.monotonic() - started, 1)
    return report


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", default="25,50,100,150,200,250,300,400,600",
                        help="booking rates to step through (stops at the first step that does not keep up)")
    parser.add_argument("--seconds", type=float, default=10.0, help="duration of each step")
    parser.add_argument("--healthz-rate", type=float, default=200.0, help="rate of the /healthz floor")
    args = parser.parse_args()
    unwind_on_sigterm()
    result = main([float(r) for r in args.rates.split(",")], args.seconds, args.healthz_rate)
    print(json.dumps(result, indent=2))
    print(summary(result), flush=True)

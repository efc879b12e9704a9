"""Operator scale benchmark on kwok nodes: `python tests/benchmarks/bench_operator.py`.

300 custom resources (30 Labs, each with 3 Shards, 5 SLOs and a dry-run ChaosExperiment) are
created at once and timed until every one is reconciled. The floor, in the same run on the same
control plane: the same 300 objects and the very children the operator renders for them, applied
directly with server-side apply (8 threads in a process of their own, like the operator's 8
workers), plus the same readiness waits that do not depend on the operator. Then the operator's RSS (/proc/<pid>/status)
and idle CPU (/proc/<pid>/stat over a window) with the 300 objects present.

"Reconciled", per kind (kwok simulates pods; it binds no PersistentVolumeClaims, and nothing
runs SQL Server), the same for the operator and the floor except for what only an operator
writes (status):
  Lab              every child present and owned by it, every Deployment's pods Ready
                   (readyReplicas == replicas, observedGeneration current); operator: also
                   status.observedGeneration == generation and Ready=True
  Shard            every child present and owned (Secret, ConfigMap, Services, StatefulSet, PDB);
                   operator: also status.observedGeneration == generation (a Shard is never Ready
                   on kwok: its pods wait for volumes)
  SLO              every child present and owned (Grafana ConfigMaps, PrometheusRule); operator:
                   also observedGeneration current and Ready=True
  ChaosExperiment  floor: the object exists (a dry run has no children); operator: also
                   observedGeneration current and Ready=True (a plan naming a running pod)

The benchmark starts its own control plane if none runs (and stops it), adds two kwok nodes
for pod capacity and installs the prometheus-operator CRDs (PrometheusRule, ServiceMonitor) if
they are missing; it removes whatever it added. Lab services run 1 replica each (210 kwok pods,
90 pending SQL Server pods).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import copy
import json
import multiprocessing
import os
import shutil
import socket
import statistics
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from pimlab.cluster.layout import KWOK_NODE_TAINT  # noqa: E402
from pimlab.cluster.local_cluster import LocalCluster  # noqa: E402
from tests.benchmarks.sigterm import unwind_on_sigterm  # noqa: E402
from pimlab.cluster.local_operator import OperatorProcess, install_operator_rbac, write_operator_kubeconfig  # noqa: E402
from pimlab_operator.chaos.governance import OPT_IN_LABEL  # noqa: E402

GROUP_VERSION = "pim-sre.lab/v1alpha1"
THIRDPARTY = ROOT / "crds" / "thirdparty"
MONITORING_CRDS = ("monitoring.coreos.com_prometheusrules.yaml", "monitoring.coreos.com_servicemonitors.yaml")
BENCH_NODES = ("kwok-bench-0", "kwok-bench-1")
WORKERS = 8  # the operator's settings.execution.max_workers
POLL_S = 1.0
GOALS = {"ratio": 2.0, "rss_mb": 150.0, "idle_cpu_pct": 1.0}
SLO_SAMPLES = ("encounter-booking-availability", "encounter-booking-latency", "encounter-review-availability",
               "billing-check-availability", "claim-submission-availability")


# --------------------------------------------------------------------------- the 300 objects

def _samples(kind: str) -> dict[str, dict]:
    found = {}
    for path in sorted((ROOT / "samples").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == kind:
                found[doc["metadata"]["name"]] = doc
    return found


def objects(namespace: str, labs: int) -> list[dict]:
    """Per Lab: the Lab (7 services at 1 replica), 3 Shards (1 replica each) splitting the 1024
    slots, 5 SLOs and a dry-run pod-kill experiment on its patient service."""
    slos = _samples("SLO")
    services = {key: {"replicas": 1} for key in ("gateway", "patient", "encounter", "billing", "admin",
                                                 "outboxRelay", "projectionWorker")}
    bounds = [(0, 341), (342, 682), (683, 1023)]
    docs = []
    for i in range(labs):
        lab = f"lab{i:02d}"
        meta = lambda name, **extra: {"name": name, "namespace": namespace, **extra}  # noqa: E731
        docs.append({"apiVersion": GROUP_VERSION, "kind": "Lab", "metadata": meta(lab),
                     "spec": {"image": "ghcr.io/pim-sre/lab:0.1.0", "shardSelector": {"matchLabels": {"lab": lab}},
                              "services": services}})
        for j, (start, end) in enumerate(bounds):
            docs.append({"apiVersion": GROUP_VERSION, "kind": "Shard",
                         "metadata": meta(f"{lab}-shard-{j:02d}", labels={"lab": lab}),
                         "spec": {"ordinal": j, "slots": {"start": start, "end": end}, "replicas": 1,
                                  "image": "mcr.microsoft.com/mssql/server:2022-latest", "edition": "Developer",
                                  "storage": {"size": "1Gi"}}})
        for name in SLO_SAMPLES:
            docs.append({"apiVersion": GROUP_VERSION, "kind": "SLO", "metadata": meta(f"{lab}-{name}"),
                         "spec": copy.deepcopy(slos[name]["spec"])})
        docs.append({"apiVersion": GROUP_VERSION, "kind": "ChaosExperiment", "metadata": meta(f"{lab}-pod-kill"),
                     "spec": {"action": "podKill", "dryRun": True, "reference": "ADR-011",
                              "target": {"selector": {"matchLabels": {"app.kubernetes.io/instance": lab,
                                                                      "app.kubernetes.io/component": "patient"}},
                                         "mode": "one"},
                              "blastRadius": {"maxPods": 1, "maxPercent": 100}, "duration": "2m"}})
    return docs


def rendered_children(body: dict, shards: list[dict]) -> list[dict]:
    """What the operator renders for `body` (with the monitoring CRDs installed)."""
    from pimlab_operator.kinds import BY_NAME
    from pimlab_operator.lab import desired as lab
    from pimlab_operator.shard import desired as shard
    from pimlab_operator.slo import desired as slo

    spec = BY_NAME[body["kind"]].spec_model.model_validate(body["spec"])
    if body["kind"] == "Lab":
        own = [s for s in shards if s["metadata"]["labels"]["lab"] == body["metadata"]["name"]]
        return lab.desired_children(body, spec, lab.shard_map(own, body["metadata"]["namespace"], None), True)
    if body["kind"] == "Shard":
        return shard.desired_children(body, spec, shard.generate_password())
    if body["kind"] == "SLO":
        return slo.desired_children(body, spec, True)
    return []


# --------------------------------------------------------------------------- apiserver access

class Api:
    """List calls and server-side apply through the operator's own client (`kube`: plain JSON,
    no model objects, so the poller stays cheap), as the cluster admin."""

    def __init__(self, kubeconfig: Path):
        self.kubeconfig = kubeconfig
        os.environ["KUBECONFIG"] = str(kubeconfig)
        from pimlab_operator import kube

        self.kube = kube
        deadline = time.monotonic() + 60
        for api_version, kind in KINDS:  # discovery once, before threads share the client
            while not kube.kind_exists(api_version, kind):  # a CRD just Established may take a moment
                if time.monotonic() > deadline:
                    raise SystemExit(f"{kind} ({api_version}) is not served")
                time.sleep(1)

    def apply(self, manifest: dict, manager: str) -> dict:
        return self.kube.apply(manifest, field_manager=manager)

    def list(self, api_version: str, kind: str, namespace: str) -> list[dict]:
        return self.kube.list_objects(api_version, kind, namespace)


#: every kind the poller reads
KINDS = (
    (GROUP_VERSION, "Lab"), (GROUP_VERSION, "Shard"), (GROUP_VERSION, "SLO"), (GROUP_VERSION, "ChaosExperiment"),
    ("v1", "ConfigMap"), ("v1", "Secret"), ("v1", "Service"), ("apps/v1", "Deployment"),
    ("apps/v1", "StatefulSet"), ("policy/v1", "PodDisruptionBudget"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"), ("monitoring.coreos.com/v1", "PrometheusRule"),
)


def _condition(obj: dict, ctype: str) -> str | None:
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c.get("type") == ctype:
            return c.get("status")
    return None


def _deployment_ready(d: dict) -> bool:
    status = d.get("status") or {}
    return (status.get("observedGeneration") == d["metadata"].get("generation")
            and (status.get("readyReplicas") or 0) >= (d["spec"].get("replicas") or 0)
            and (status.get("updatedReplicas") or 0) >= (d["spec"].get("replicas") or 0))


class Tracker:
    """Polls the namespace once per POLL_S and records when each owner first met the definition."""

    def __init__(self, api: Api, namespace: str, expected: dict[tuple[str, str], set], with_status: bool):
        self.api, self.namespace, self.expected, self.with_status = api, namespace, expected, with_status
        self.done: dict[tuple[str, str], float] = {}
        self.uids: dict[tuple[str, str], str] = {}

    def _owner_ok(self, key, owner: dict | None, present: dict) -> bool:
        kind, name = key
        if owner is None:
            return False
        uid = owner["metadata"]["uid"]
        for child in self.expected[key]:
            obj = present.get(child)
            if obj is None or not any(r.get("uid") == uid for r in obj["metadata"].get("ownerReferences") or []):
                return False
            if child[1] == "Deployment" and not _deployment_ready(obj):
                return False
        if not self.with_status:
            return True
        if (owner.get("status") or {}).get("observedGeneration") != owner["metadata"].get("generation"):
            return False
        return kind == "Shard" or _condition(owner, "Ready") == "True"

    def poll(self, t0: float) -> int:
        now = time.monotonic() - t0
        pending_kinds = {k for k, _ in self.expected if (k, _) not in self.done}
        child_kinds = {c[:2] for key, children in self.expected.items() if key not in self.done for c in children}
        owners = {}
        for kind in pending_kinds:
            for obj in self.api.list(GROUP_VERSION, kind, self.namespace):
                owners[(kind, obj["metadata"]["name"])] = obj
        present = {}
        for api_version, kind in child_kinds:
            for obj in self.api.list(api_version, kind, self.namespace):
                present[(api_version, kind, obj["metadata"]["name"])] = obj
        for key in self.expected:
            if key not in self.done and self._owner_ok(key, owners.get(key), present):
                self.done[key] = now
        return len(self.expected) - len(self.done)

    def wait(self, t0: float, timeout: float) -> bool:
        while time.monotonic() - t0 < timeout:
            started = time.monotonic()
            if self.poll(t0) == 0:
                return True
            time.sleep(max(0.0, POLL_S - (time.monotonic() - started)))
        return False

    def start(self, t0: float, timeout: float) -> concurrent.futures.Future:
        """Poll from t0 on, while the objects are still being applied."""
        pool = concurrent.futures.ThreadPoolExecutor(1)
        future = pool.submit(self.wait, t0, timeout)
        pool.shutdown(wait=False)
        return future

    def summary(self) -> dict:
        per_kind = {}
        for kind in ("Lab", "Shard", "SLO", "ChaosExperiment"):
            times = sorted(t for (k, _), t in self.done.items() if k == kind)
            total = sum(1 for k, _ in self.expected if k == kind)
            per_kind[kind] = {"done": len(times), "of": total,
                              "p50_s": round(statistics.median(times), 1) if times else None,
                              "last_s": round(times[-1], 1) if times else None}
        return per_kind


def expected_children(docs: list[dict]) -> dict[tuple[str, str], set]:
    shards = [d for d in docs if d["kind"] == "Shard"]
    expected = {}
    for doc in docs:
        body = copy.deepcopy(doc)
        body["metadata"].setdefault("uid", "expected")
        expected[(doc["kind"], doc["metadata"]["name"])] = {
            (c["apiVersion"], c["kind"], c["metadata"]["name"]) for c in rendered_children(body, shards)}
    return expected


# --------------------------------------------------------------------------- the two phases

_FLOOR_API: Api | None = None


def _floor_ready(kubeconfig: str) -> None:
    """In the floor's process: the client, discovery and the templates, before the clock starts."""
    global _FLOOR_API
    _FLOOR_API = Api(Path(kubeconfig))
    expected_children(objects("warm-up", 1))


def _floor_apply(docs: list[dict]) -> int:
    """In the floor's process: each object, then the children rendered from it as created
    (its uid in their ownerReferences), by WORKERS threads; returns how many were applied."""
    api, shards = _FLOOR_API, [d for d in docs if d["kind"] == "Shard"]

    def one(doc: dict) -> int:
        body = api.apply(doc, "pimlab-bench")
        children = rendered_children(body, shards)
        for child in children:
            api.kube.apply(child)
        return 1 + len(children)

    with concurrent.futures.ThreadPoolExecutor(WORKERS) as pool:
        return sum(pool.map(one, docs))


def run_floor(api: Api, plane: LocalCluster, labs: int, timeout: float) -> dict:
    """The 300 objects and their rendered children, applied directly (no operator)."""
    namespace = f"bench-floor-{uuid.uuid4().hex[:6]}"
    plane.ensure_kwok_namespace(namespace)  # its pods are simulated, also beside a real node
    docs = objects(namespace, labs)
    expected = expected_children(docs)
    tracker = Tracker(api, namespace, expected, with_status=False)
    # The applies run in a process of their own, as the operator does: the poller here must
    # not take the interpreter lock from them.
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as proc:
        proc.submit(_floor_ready, str(api.kubeconfig)).result()
        t0 = time.monotonic()
        polling = tracker.start(t0, timeout)
        applied = proc.submit(_floor_apply, docs).result()
    applied_s = time.monotonic() - t0
    finished = polling.result()
    elapsed = max(tracker.done.values(), default=0.0)
    result = {"namespace": namespace, "objects": len(docs), "objects_applied": applied,
              "apply_s": round(applied_s, 1), "reconciled": finished,
              "seconds": round(elapsed, 1) if finished else None, "per_kind": tracker.summary()}
    print(json.dumps({"floor": result}), flush=True)
    return result


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime (fields 14, 15)


def _rss_mb(pid: int) -> tuple[float, float]:
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(status["VmRSS"].split()[0]) / 1024, int(status["VmHWM"].split()[0]) / 1024


def _metrics(port: int) -> dict[str, float]:
    """The operator's reconcile and apply counters, summed per name and kind/trigger."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    found: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(("pimlab_operator_reconciles_total", "pimlab_operator_applied_objects_total",
                            "pimlab_operator_pruned_objects_total")):
            name, value = line.rsplit(" ", 1)
            found[name] = found.get(name, 0.0) + float(value)
    return found


def _delta(before: dict, after: dict, prefix: str) -> dict[str, int]:
    return {k.split("{", 1)[1].rstrip("}"): int(after[k] - before.get(k, 0)) for k in after
            if k.startswith(prefix) and after[k] - before.get(k, 0)}


def _idle(pid: int, metrics_port: int, seconds: float) -> dict:
    """The operator's CPU (% of a core) and its reconciles and applies over `seconds`."""
    before, ticks0, w0 = _metrics(metrics_port), _cpu_ticks(pid), time.monotonic()
    time.sleep(seconds)
    ticks1, w1, after = _cpu_ticks(pid), time.monotonic(), _metrics(metrics_port)
    return {"window_s": round(w1 - w0, 1),
            "cpu_pct": round(100.0 * (ticks1 - ticks0) / os.sysconf("SC_CLK_TCK") / (w1 - w0), 2),
            "reconciles": _delta(before, after, "pimlab_operator_reconciles_total"),
            "applied": sum(_delta(before, after, "pimlab_operator_applied_objects_total").values()),
            "metrics": after}


def run_operator(api: Api, plane: LocalCluster, labs: int, timeout: float, settle: float,
                 idle_window: float, backed_off: float, workdir: Path) -> dict:
    namespace = f"bench-op-{uuid.uuid4().hex[:6]}"
    plane.ensure_kwok_namespace(namespace)  # its pods are simulated, also beside a real node
    # the dry-run experiments plan targets only in a namespace that opted in to chaos
    plane.kubectl("label", "namespace", namespace, "=".join(OPT_IN_LABEL))
    install_operator_rbac(plane)
    kubeconfig = workdir / "operator.kubeconfig"
    write_operator_kubeconfig(plane, kubeconfig)
    metrics_port, health_port = _free_port(), _free_port()
    operator = OperatorProcess(kubeconfig, workdir / "operator.log", workdir / "operator.pid",
                               metrics_port=metrics_port, health_port=health_port, namespaces=(namespace,))
    pid = operator.start()
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{health_port}/healthz", timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline or operator.pid() is None:
                    raise SystemExit(f"the operator did not start: see {workdir / 'operator.log'}")
                time.sleep(0.5)
        rss_empty, _ = _rss_mb(pid)
        docs = objects(namespace, labs)
        tracker = Tracker(api, namespace, expected_children(docs), with_status=True)
        t0 = time.monotonic()
        polling = tracker.start(t0, timeout)
        with concurrent.futures.ThreadPoolExecutor(WORKERS) as pool:
            list(pool.map(lambda doc: api.apply(doc, "pimlab-bench"), docs))
        applied_s = time.monotonic() - t0
        finished = polling.result()
        elapsed = max(tracker.done.values(), default=0.0)
        result = {"namespace": namespace, "objects": len(docs), "apply_s": round(applied_s, 1),
                  "reconciled": finished, "seconds": round(elapsed, 1) if finished else None,
                  "per_kind": tracker.summary(), "rss_mb_empty": round(rss_empty, 1)}
        print(json.dumps({"operator": result}), flush=True)
        time.sleep(settle)
        first = _idle(pid, metrics_port, idle_window)
        # Every object's first quiet resyncs fall in the minutes after creation; once they have
        # backed off (x4 per quiet pass), the operator is idle as it stays: measured again.
        time.sleep(max(0.0, backed_off - settle - idle_window))
        later = _idle(pid, metrics_port, idle_window)
        rss, hwm = _rss_mb(pid)
        result.update({
            "idle_window_s": later["window_s"], "idle_cpu_pct_of_a_core": later["cpu_pct"],
            "idle_reconciles": later["reconciles"], "idle_applied_objects": later["applied"],
            "first_idle_after_s": settle, "first_idle_cpu_pct_of_a_core": first["cpu_pct"],
            "first_idle_reconciles": sum(first["reconciles"].values()),
            "idle_after_s": round(max(backed_off, settle + idle_window), 1),
            "rss_mb": round(rss, 1), "rss_peak_mb": round(hwm, 1),
            "total_reconciles": int(sum(v for k, v in later["metrics"].items()
                                        if k.startswith("pimlab_operator_reconciles_total"))),
            "total_applied_objects": int(sum(v for k, v in later["metrics"].items()
                                             if k.startswith("pimlab_operator_applied_objects_total"))),
        })
        print(json.dumps({"operator_idle": {k: result[k] for k in (
            "first_idle_after_s", "first_idle_cpu_pct_of_a_core", "first_idle_reconciles", "idle_after_s",
            "idle_window_s", "idle_cpu_pct_of_a_core", "rss_mb", "rss_peak_mb", "idle_reconciles",
            "idle_applied_objects")}}), flush=True)
        return result
    finally:
        # Deleted while the operator runs, so that it takes its finalizers off its objects.
        _delete_namespace(plane, namespace, 120)
        operator.stop()
        _strip_finalizers(plane, namespace)


# --------------------------------------------------------------------------- set-up and clean-up

def _add_bench_nodes(plane: LocalCluster) -> None:
    """Two more kwok nodes: 210 pods do not fit next to other pods on the cluster's two. Tainted
    as the cluster's own are beside a real node (the benchmark's namespaces tolerate it)."""
    plane.ensure_kwok()  # beside a real node kwok starts on demand
    capacity = {"cpu": "32", "memory": "256Gi", "pods": "220", "ephemeral-storage": "500Gi"}
    docs = [{"apiVersion": "v1", "kind": "Node",
             "metadata": {"name": name, "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
                          "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                                     "kubernetes.io/arch": "amd64", "type": "kwok"}},
             "spec": {"taints": [KWOK_NODE_TAINT] if plane.real_node else []},
             "status": {"capacity": capacity, "allocatable": capacity}} for name in BENCH_NODES]
    plane.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(docs))
    plane.kubectl("wait", "--for=condition=Ready", "--timeout=60s", *[f"node/{n}" for n in BENCH_NODES])


def _crd_names(plane: LocalCluster) -> set[str]:
    return set(plane.kubectl("get", "crd", "-o", "name").stdout.split())


def _install_crds(plane: LocalCluster) -> set[str]:
    """Project CRDs and the two prometheus-operator CRDs; returns the CRDs that were not there."""
    before = _crd_names(plane)
    plane.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds"))
    for name in MONITORING_CRDS:
        plane.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(THIRDPARTY / name))
    plane.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
    return _crd_names(plane) - before


def _strip_finalizers(plane: LocalCluster, namespace: str) -> None:
    """Whatever the operator left with its finalizer (it stopped first) must not keep the
    namespace Terminating for ever."""
    for plural in ("labs", "shards", "slos", "chaosexperiments"):
        names = plane.kubectl("get", plural, "-n", namespace, "-o", "name", check=False).stdout.split()
        for name in names:
            plane.kubectl("patch", name, "-n", namespace, "--type=merge", "-p",
                          '{"metadata":{"finalizers":null}}', check=False)


def _delete_namespace(plane: LocalCluster, namespace: str, wait_s: float) -> None:
    plane.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
    plane.kubectl("wait", "--for=delete", f"namespace/{namespace}", f"--timeout={int(wait_s)}s",
                  check=False, timeout=wait_s + 10)


def main(labs: int, timeout: float, settle: float, idle_window: float, backed_off: float) -> dict:
    plane = LocalCluster(ROOT, log=sys.stderr)
    started_here = not plane.healthy()
    if started_here:
        plane.up()
    elif plane.foreign_reason():
        raise SystemExit(f"refusing to run: {plane.foreign_reason()}")
    workdir = Path(tempfile.mkdtemp(prefix="pim-bench-operator-"))
    added_crds: set[str] = set()
    had_operator_rbac = plane.kubectl("get", "namespace", "pim-system", check=False).returncode == 0
    try:
        _add_bench_nodes(plane)
        added_crds = _install_crds(plane)
        api = Api(plane.layout.kubeconfig)
        floor = run_floor(api, plane, labs, timeout)
        _delete_namespace(plane, floor["namespace"], 180)  # its pods must not compete with the operator's
        op = run_operator(api, plane, labs, timeout, settle, idle_window, backed_off, workdir)
    finally:
        if started_here:
            plane.down(quiet=True)
        else:  # leave the cluster as it was found
            for namespace in plane.kubectl("get", "namespace", "-o", "name").stdout.split():
                if namespace.startswith("namespace/bench-"):
                    _strip_finalizers(plane, namespace.split("/", 1)[1])
                    _delete_namespace(plane, namespace.split("/", 1)[1], 120)
            plane.kubectl("delete", "node", *BENCH_NODES, "--ignore-not-found", check=False)
            if not had_operator_rbac:
                for name in ("rbac.yaml", "namespace.yaml"):
                    plane.kubectl("delete", "--ignore-not-found", "--wait=false", "-f",
                                  str(ROOT / "clusters/base/operator" / name), check=False)
            for crd in sorted(added_crds):
                plane.kubectl("delete", crd, "--wait=false", check=False)
    ratio = round(op["seconds"] / floor["seconds"], 2) if op["seconds"] and floor["seconds"] else None
    verdict = {
        "within_2x_of_floor": ratio is not None and ratio <= GOALS["ratio"],
        "rss_under_150_mb": op["rss_mb"] < GOALS["rss_mb"],
        "idle_cpu_under_1pct": op["idle_cpu_pct_of_a_core"] < GOALS["idle_cpu_pct"],
    }
    print(f"{op['objects']} OBJECTS reconciled: operator {op['seconds']} s  floor (direct server-side apply) "
          f"{floor['seconds']} s  ratio = {ratio}x (goal <= {GOALS['ratio']}x)   operator RSS {op['rss_mb']} MB "
          f"(peak {op['rss_peak_mb']}, goal < {GOALS['rss_mb']:.0f})   idle CPU {op['idle_cpu_pct_of_a_core']} % "
          f"of a core over {op['idle_window_s']} s from {op['idle_after_s']} s after reconciled (goal < "
          f"{GOALS['idle_cpu_pct']}; {op['first_idle_cpu_pct_of_a_core']} % from {op['first_idle_after_s']} s, "
          f"during the first quiet resyncs)", flush=True)
    shutil.rmtree(workdir, ignore_errors=True) if all(verdict.values()) else \
        print(f"operator log kept: {workdir / 'operator.log'}", flush=True)
    return {"operator": op, "floor": floor, "ratio_operator_vs_floor": ratio, "goals": GOALS,
            "meets": verdict, "cores": os.cpu_count()}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labs", type=int, default=30, help="Labs; each brings 3 Shards, 5 SLOs, 1 experiment")
    parser.add_argument("--timeout", type=float, default=240, help="per phase, seconds, to reconcile everything")
    parser.add_argument("--settle", type=float, default=60, help="seconds between reconciled and the first idle window")
    parser.add_argument("--idle-window", type=float, default=60, help="seconds over which idle CPU is measured")
    parser.add_argument("--backed-off", type=float, default=420,
                        help="seconds after reconciled when idle CPU is measured again, resyncs backed off")
    args = parser.parse_args()
    unwind_on_sigterm()
    started = time.monotonic()
    report = main(args.labs, args.timeout, args.settle, args.idle_window, args.backed_off)
    report["wall_seconds"] = round(time.monotonic() - started, 1)
    print(json.dumps(report, indent=2))

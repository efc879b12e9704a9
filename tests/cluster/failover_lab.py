"""A small lab on the real node for the shard failover proof and `make bench-failover`.

One PostgreSQL Shard (3 replicas, `ANY 1` of the two standbys, all 1024 slots) and the four
services a booking and an audit check need (gateway, patient, encounter, admin; the workers are
scaled to 0 to spare the 2-core node), the operator a local process (tests/cluster/
operator_process.py). The client talks to the gateway's ClusterIP from the host, as a user's
client talks to the Service: every write goes gateway -> encounter service -> `-primary`
Service -> PostgreSQL. Faults are injected from the host, where we are root: `kill -9` of a
pod's postmaster or SIGSTOP of its postgres processes, found through /proc by the pod's cgroup.
"""

from __future__ import annotations

import base64
import contextlib
import os
import signal
import itertools
import json
import threading
import time
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

import httpx
import yaml

from api_services.auth import issue_dev_token
from api_services.config import load_settings
from pimlab.cluster.layout import REAL_NODE_NAMESPACE_ANNOTATIONS
from pimlab.cluster.lab import sample_documents
from pimlab.waiting import TimedOut, wait_for
from pimlab_operator.objects import dev_issuer_secret
from pimlab_operator.shard.desired import credentials_secret_name
from pimlab_operator.shard.model import ShardSpec

LAB, SHARD = "pim", "shard-00"
PODS = tuple(f"{SHARD}-{i}" for i in range(3))
UNHEALTHY_AFTER = 5
#: services the client's journey needs; the background workers stay at 0 replicas
SERVICES = {"gateway": 1, "patient": 1, "encounter": 1, "admin": 1}
PSQL = "/usr/lib/postgresql/15/bin/psql"
SOCKET_DIR = "/var/lib/pimlab/run/socket"


def documents(namespace: str) -> list[dict]:
    """The real-node sample Lab and its first Shard, trimmed to one shard holding every slot."""
    docs = {d["kind"] + "/" + d["metadata"]["name"]: d for d in sample_documents(real_node=True)}
    lab, shard = docs[f"Lab/{LAB}"], docs[f"Shard/{SHARD}"]
    for doc in (lab, shard):
        doc["metadata"]["namespace"] = namespace
    for key, service in lab["spec"]["services"].items():
        service.pop("autoscaling", None)
        service["replicas"] = SERVICES.get(key, 0)
    shard["spec"]["slots"] = {"start": 0, "end": 1023}
    shard["spec"]["failover"]["unhealthyAfterSeconds"] = UNHEALTHY_AFTER
    return [lab, shard]


_WRITER_RUNS = itertools.count()


def condition(obj: dict | None, ctype: str) -> dict:
    return next((c for c in ((obj or {}).get("status") or {}).get("conditions") or [] if c["type"] == ctype), {})


def booking(patient_id: str) -> dict:
    return {"patient_id": patient_id, "provider_id": "prv-0001", "facility_id": "fac-001",
            "scheduled_for": "2025-03-01T09:30:00Z", "reason": "follow-up visit"}


@dataclass
class Result:
    status: int
    started: float
    ended: float
    tracking_id: str | None
    retry_after: str | None
    code: str | None = None          # the error body's machine code, or the client's exception


class Writers:
    """Clients booking encounters through the gateway until stopped; every answer is kept."""

    def __init__(self, lab: FailoverLab, threads: int = 2, pause: float = 0.05):
        self.lab, self.count, self.pause = lab, threads, pause
        self.results: list[Result] = []
        self.keys = f"{lab.run_id}-{next(_WRITER_RUNS)}"   # idempotency keys never repeat across runs
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []

    def _run(self, n: int) -> None:
        headers = {"Authorization": f"Bearer {self.lab.token('clinician', 'prv-0001')}"}
        with httpx.Client(base_url=self.lab.url, timeout=30, headers=headers) as client:
            i = 0
            while not self.stop.is_set():
                started = time.monotonic()
                try:
                    resp = client.post("/encounters", json=booking(self.lab.patients[(n + i) % len(self.lab.patients)]),
                                       headers={"Idempotency-Key": f"{self.keys}-w{n}-{i}"})
                    status, body = resp.status_code, resp.json()
                    tid = body.get("tracking_id") if status == 202 else None
                    retry, code = resp.headers.get("Retry-After"), body.get("code")
                except (httpx.HTTPError, ValueError) as error:
                    # no answer at all (connection refused, timeout) or not JSON
                    status, tid, retry, code = 0, None, None, type(error).__name__
                self.results.append(Result(status, started, time.monotonic(), tid, retry, code))
                i += 1
                time.sleep(self.pause)

    def __enter__(self) -> Writers:
        self.threads = [threading.Thread(target=self._run, args=(n,), daemon=True) for n in range(self.count)]
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(60)

    def acknowledged(self) -> set[str]:
        return {r.tracking_id for r in self.results if r.status == 202}

    def between(self, start: float, end: float) -> list[Result]:
        return [r for r in self.results if r.started >= start and r.ended <= end]

    def first_ack_after(self, t: float) -> float | None:
        """Seconds from `t` to the first write acknowledged that was sent after `t`."""
        acks = [r.ended for r in self.results if r.status == 202 and r.started >= t]
        return min(acks) - t if acks else None

    def outage_after(self, t: float) -> float | None:
        """The client's outage after a fault injected at `t`: the longest time from a write sent
        after `t` that was not acknowledged to the first acknowledged write sent after it (a pod
        deletion takes a moment to stop the primary, and a write can fail and the next succeed
        in that moment: the outage is the stretch that follows, not that blip)."""
        failed = [r.started for r in self.results if r.status != 202 and r.started >= t]
        gaps = [gap for start in failed if (gap := self.first_ack_after(start)) is not None]
        return max(gaps) if gaps else None

    def wait_acks(self, n: int = 3, timeout: float = 60) -> None:
        base = len(self.acknowledged())
        try:
            wait_for(lambda: len(self.acknowledged()) >= base + n, timeout=timeout, what=f"{n} acknowledged writes")
        except TimedOut as error:
            recent = Counter(f"{r.status} {r.code or ''}".strip() for r in self.results[-20:])
            raise TimedOut(f"{error}; the last 20 answers: {dict(recent)}") from None




@dataclass
class Failover:
    """One failover as the client and the Shard's status saw it."""

    old: str
    new: str
    client_outage: float     # the client's outage: first failed write -> first acknowledged write after it
    record: dict              # status.lastFailover
    status: dict              # status once the shard is Ready again
    writers: Writers


class FailoverLab:
    def __init__(self, cluster, namespace: str, workdir: Path, operator_log: Path | None = None):
        self.cluster, self.namespace, self.workdir, self.operator_log = cluster, namespace, workdir, operator_log
        self.run_id = f"r{int(time.time())}"
        self.url = ""
        self.patients: list[str] = []
        self._settings = None

    # -- bring-up --------------------------------------------------------------------------
    def up(self, timeout: float = 600) -> None:
        self.cluster.kubectl("annotate", "namespace", self.namespace, "--overwrite",
                             *[f"{k}={v}" for k, v in REAL_NODE_NAMESPACE_ANNOTATIONS.items()])
        self.cluster.apply(documents(self.namespace))
        wait_for(lambda: condition(self.cluster.get("lab", LAB, self.namespace), "Ready").get("status") == "True",
                 timeout=timeout, interval=3, what="the Lab to become Ready on the real node")
        self.wait_ready(timeout=300)
        self.connect()

    def connect(self, patients: int = 3) -> None:
        """The client's side of the Lab once it is up: its development issuer, the gateway's
        ClusterIP, the seed, `patients` new patients (spread over the shards by their ids)."""
        key = base64.b64decode(self.secret(dev_issuer_secret(LAB))["dev-issuer.pem"])
        path = self.workdir / "dev-issuer.pem"
        path.write_bytes(key)
        path.chmod(0o600)
        self._settings = replace(load_settings(), dev_issuer_key_file=path)
        service = yaml.safe_load(self.cluster.kubectl("get", "service", f"{LAB}-gateway", "-n", self.namespace,
                                                      "-o", "yaml").stdout)["spec"]
        self.url = f"http://{service['clusterIP']}:{service['ports'][0]['port']}"
        wait_for(lambda: (p := self.cluster.kubectl("exec", "-n", self.namespace, f"deployment/{LAB}-admin", "--",
                                                    "pimlab", "seed", "--patients", "5", check=False,
                                                    timeout=300)).returncode == 0 and p.stdout,
                 timeout=180, interval=5, what="the shard to take the seed")
        self.patients = [self._patient(chr(ord("A") + i)) for i in range(patients)]

    def down(self) -> None:
        """Keep the shard's pod logs (in the work directory), then delete the Lab and the Shard
        while the operator still runs (it holds their finalizers): the pods go, and the
        namespace is not left Terminating."""
        for pod in PODS:
            proc = self.cluster.kubectl("logs", pod, "-n", self.namespace, check=False)
            (self.workdir / f"{pod}.log").write_text(proc.stdout + proc.stderr)
        self.cluster.kubectl("delete", "lab,shard", "--all", "-n", self.namespace, "--timeout=90s",
                             check=False, timeout=100)

    def _patient(self, tag: str) -> str:
        resp = wait_for(lambda: (r := httpx.post(self.url + "/patients", timeout=10, json={
            "pseudonym": f"Failover Person {tag}", "birth_year": 1980, "sex": "F"},
            headers={"Authorization": f"Bearer {self.token('admin', 'admin-1')}"})).status_code == 201 and r,
            timeout=60, interval=2, what="a patient created through the gateway")
        return resp.json()["patient_id"]

    def token(self, persona: str, user: str) -> str:
        return issue_dev_token(self._settings, persona, user)

    def secret(self, name: str) -> dict:
        return yaml.safe_load(self.cluster.kubectl("get", "secret", name, "-n", self.namespace, "-o", "yaml").stdout)["data"]

    def password(self) -> str:
        spec = ShardSpec.model_validate(documents(self.namespace)[1]["spec"])
        return base64.b64decode(self.secret(credentials_secret_name(SHARD, spec))["password"]).decode()

    # -- what the cluster says ---------------------------------------------------------------
    def shard(self) -> dict:
        return self.cluster.get("shard", SHARD, self.namespace) or {}

    def primary(self) -> str | None:
        return (self.shard().get("status") or {}).get("currentPrimary")

    def healthy(self, shard: dict | None = None) -> bool:
        """Ready with one primary and both standbys streaming, each labelled."""
        shard = shard or self.shard()
        status = shard.get("status") or {}
        replicas = status.get("replicas") or []
        return (status.get("phase") == "Ready" and status.get("readyReplicas") == len(PODS)
                and sorted(r.get("role") for r in replicas) == ["primary", "secondary", "secondary"]
                and all(r.get("ready") for r in replicas))

    def wait_ready(self, timeout: float = 120) -> dict:
        return wait_for(lambda: (s := self.shard()) and self.healthy(s) and s, timeout=timeout, interval=1,
                        what=f"Shard {SHARD} Ready with one primary and two streaming standbys")

    def fail_over(self, fault, settle_timeout: float = 180) -> Failover:
        """`fault(primary)` under write load; returns once the shard is Ready again (the old
        primary back as a standby) and the client has had more writes acknowledged."""
        before = self.wait_ready()["status"]
        old = before["currentPrimary"]
        with Writers(self) as writers:
            writers.wait_acks()
            lost_at = time.monotonic()
            fault(old)
            record = wait_for(lambda: (st := self.shard()["status"]).get("failoverCount", 0) > before.get("failoverCount", 0)
                              and st["lastFailover"], timeout=UNHEALTHY_AFTER + 60, interval=0.5,
                              what="the failover to be recorded in status")
            client_outage = wait_for(lambda: writers.outage_after(lost_at), timeout=30,
                                 what="a write acknowledged after the loss")
            status = self.wait_ready(timeout=settle_timeout)["status"]
            writers.wait_acks()
        return Failover(old, status["currentPrimary"], client_outage, record, status, writers)

    def standbys(self) -> list[str]:
        primary = self.primary()
        return [p for p in PODS if p != primary]

    def stored(self, pod: str) -> set[str]:
        """Encounter ids in `pod`'s database (psql over the instance's private socket)."""
        username = base64.b64decode(self.secret(f"{SHARD}-credentials")["username"]).decode()
        out = self.cluster.kubectl("exec", "-n", self.namespace, pod, "-c", "postgres", "--", PSQL, "-h", SOCKET_DIR,
                                   "-U", username, "-d", "pim", "-Atc", "SELECT encounter_id FROM encounters").stdout
        return set(out.split())

    def audit_verify(self) -> dict:
        """The services' audit check, retried as a client should on 503 + Retry-After (the admin
        pod takes a few readiness probes to rejoin its Service after the shard recovers)."""
        def ask():
            resp = httpx.post(self.url + "/admin/audit/verify", timeout=60,
                              headers={"Authorization": f"Bearer {self.token('sre', 'sre-1')}"})
            assert resp.status_code in (200, 503) and (resp.status_code == 200 or resp.headers.get("Retry-After")), \
                resp.text
            return resp.status_code == 200 and resp
        return wait_for(ask, timeout=60, interval=2, what="the audit check to answer").json()

    def passes(self, since: str) -> list[str]:
        """The operator's log of its failover passes on the shard from `since` (an RFC 3339 time):
        each decision with every step's duration, to say where a slow failover spent its time."""
        if not self.operator_log or not self.operator_log.exists():
            return []
        found = []
        for line in self.operator_log.read_text(errors="replace").splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            message, at = entry.get("message", ""), entry.get("timestamp", "")
            if message.startswith(f"shard {self.namespace}/{SHARD}:") and at[:23] >= since[:23].replace("Z", ""):
                found.append(f"{at[11:23]} {message}")
        return found

    def restarts(self) -> dict[str, tuple[str, int]]:
        """Each shard pod's uid and container restarts: what a rolling update or a crash changes."""
        items = yaml.safe_load(self.cluster.kubectl("get", "pods", "-n", self.namespace, "-o", "yaml").stdout)["items"]
        return {p["metadata"]["name"]: (p["metadata"]["uid"], sum(c.get("restartCount", 0) for c in
                                                                    p["status"].get("containerStatuses") or []))
                for p in items if p["metadata"]["name"] in PODS}

    def service_labels(self, service: str) -> dict[str, str]:
        return {"app.kubernetes.io/instance": LAB, "app.kubernetes.io/component": service}

    def service_pods(self, service: str) -> list[str]:
        """The service's pods that are not leaving, by name."""
        selector = ",".join(f"{k}={v}" for k, v in self.service_labels(service).items())
        items = yaml.safe_load(self.cluster.kubectl("get", "pods", "-n", self.namespace, "-l", selector,
                                                    "-o", "yaml").stdout)["items"]
        return sorted(p["metadata"]["name"] for p in items if not p["metadata"].get("deletionTimestamp"))

    def unreadable(self, encounter_ids: set[str], settle: float = 15) -> dict[str, int]:
        """The encounters GET /encounters/{id} does not return (id -> last status). Reads go to
        a standby, which applies a commit a moment after acknowledging it: each id is given
        `settle` seconds."""
        headers = {"Authorization": f"Bearer {self.token('clinician', 'prv-0001')}"}
        missing: dict[str, int] = {}
        with httpx.Client(base_url=self.url, timeout=10, headers=headers) as client:
            deadline = time.monotonic() + settle
            pending = set(encounter_ids)
            while pending:
                for eid in sorted(pending):
                    status = client.get(f"/encounters/{eid}").status_code
                    if status == 200:
                        pending.discard(eid)
                        missing.pop(eid, None)
                    else:
                        missing[eid] = status
                if not pending or time.monotonic() > deadline:
                    break
                time.sleep(1)
        return missing

    # -- faults, from the host ------------------------------------------------------------------
    def pod_uid(self, pod: str) -> str:
        return self.cluster.get("pod", pod, self.namespace)["metadata"]["uid"]

    def postgres_pids(self, pod: str) -> list[int]:
        """The pod's live postgres processes (postmaster first), found by the pod's cgroup."""
        uid = self.pod_uid(pod)
        marks = (f"pod{uid}", f"pod{uid.replace('-', '_')}")
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                if (entry / "comm").read_text().strip() != "postgres" or \
                        not any(m in (entry / "cgroup").read_text() for m in marks):
                    continue
                state, parent = (entry / "stat").read_text().rsplit(")", 1)[1].split()[:2]
                parent_comm = Path(f"/proc/{parent}/comm").read_text().strip()
            except (OSError, ValueError, IndexError):
                continue
            if state != "Z":  # a zombie is dead already: killing or stopping it does nothing
                found.append((parent_comm == "postgres", int(entry.name)))
        return [pid for _, pid in sorted(found)]

    def kill9(self, pod: str) -> int:
        pids = wait_for(lambda: self.postgres_pids(pod), timeout=30, what=f"postgres running in {pod}")
        os.kill(pids[0], signal.SIGKILL)
        return pids[0]

    def freeze(self, pod: str) -> list[int]:
        """SIGSTOP every postgres process of the pod: it stops answering, as a hung machine does."""
        pids = self.postgres_pids(pod)
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        return pids

    @staticmethod
    def thaw(pids: list[int]) -> None:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass

    @contextlib.contextmanager
    def standbys_frozen(self):
        """Every standby hung (SIGSTOP) for the body of the `with`, thawed however it ends."""
        frozen: list[int] = []
        try:
            for pod in self.standbys():
                frozen += self.freeze(pod)
            yield
        finally:
            self.thaw(frozen)

    # -- what must never show the password ------------------------------------------------------
    def places_showing(self, secret: str, operator_log: Path) -> list[str]:
        """Every place outside the Secret that shows `secret`: names only, never the text."""
        ns = ["-n", self.namespace]
        texts = {"operator log": operator_log.read_text(errors="replace"),
                 "Shard": self.cluster.kubectl("get", "shard", SHARD, *ns, "-o", "yaml").stdout,
                 "events": self.cluster.kubectl("get", "events", *ns, "-o", "yaml").stdout,
                 "ConfigMaps": self.cluster.kubectl("get", "configmaps", *ns, "-o", "yaml").stdout,
                 "StatefulSets and Deployments": self.cluster.kubectl("get", "statefulsets,deployments", *ns,
                                                                      "-o", "yaml").stdout}
        pods = yaml.safe_load(self.cluster.kubectl("get", "pods", *ns, "-o", "yaml").stdout)["items"]
        for pod in pods:
            name = pod["metadata"]["name"]
            for container in pod["spec"]["containers"]:
                for previous in ("--previous=false", "--previous=true"):
                    proc = self.cluster.kubectl("logs", name, "-c", container["name"], previous, *ns, check=False)
                    texts[f"log of {name}/{container['name']} {previous}"] = proc.stdout
        return sorted(where for where, text in texts.items() if secret in text)

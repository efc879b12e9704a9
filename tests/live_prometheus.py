"""A real Prometheus (Debian's binary) on loopback, scraping real `pimlab serve` processes, with
an SLO's recording and alerting rules loaded. Used by the service-level SLO test and by the
cluster test that has the operator write the budget into status.

The lab's topology in miniature: a gateway process in front of one backend process that hosts
every domain service (`--service all`), both on SQLite files. Killing the backend is a real
outage the gateway answers with 503 `upstream_unavailable`, the SLO measured at the gateway.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import yaml

from api_services.catalog import ROUTED

PYTHON = sys.executable

#: A short-window variant of a gateway availability SLO: objective 99 % over 1h, one page
#: tier 5m/1m at 14.4x (threshold 0.144) that must hold 5 s.
GATEWAY_SLO = {
    "apiVersion": "pim-sre.lab/v1alpha1", "kind": "SLO",
    "metadata": {"name": "gateway-write-availability", "namespace": "lab", "uid": "uid-gateway-write-availability",
                 "generation": 1},
    "spec": {
        "service": "gateway", "description": "Writes through the gateway fail.",
        "sli": {"ratio": {
            "errors": 'sum(rate(pim_http_requests_total{service="gateway",method="POST",status=~"5.."}[{{window}}]))',
            "total": 'sum(rate(pim_http_requests_total{service="gateway",method="POST"}[{{window}}]))'}},
        "objective": 99.0, "window": "1h",
        "alerting": {"page": {"for": "5s", "tiers": [{"longWindow": "5m", "shortWindow": "1m", "burnRate": 14.4}]},
                     "ticket": {"enabled": False}},
    },
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(url: str, proc: subprocess.Popen, log: Path, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{proc.args[0]} exited:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{url} not ready in {seconds} s:\n{log.read_text()[-3000:]}")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class Services:
    workdir: Path
    gateway_port: int
    backend_port: int
    env: dict
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def gateway(self) -> str:
        return f"http://127.0.0.1:{self.gateway_port}"

    def _start(self, name: str, service: str, port: int, extra: dict) -> None:
        log = self.workdir / f"{name}.log"
        with open(log, "ab") as out:
            proc = subprocess.Popen([PYTHON, "-m", "pimlab.cli", "serve", "--service", service, "--port", str(port)],
                                    cwd=self.workdir, env={**self.env, **extra}, stdout=out, stderr=subprocess.STDOUT)
        self.procs[name] = proc
        _wait(f"http://127.0.0.1:{port}/healthz", proc, log)

    def start_backend(self) -> None:
        self._start("backend", "all", self.backend_port, {})

    def stop_backend(self) -> None:
        stop(self.procs.pop("backend"))

    def stop(self) -> None:
        for proc in self.procs.values():
            stop(proc)
        self.procs.clear()


def start_services(workdir: Path) -> Services:
    import os

    workdir.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items()
           if k not in ("PIM_DATA_DIR", "PIM_SHARD_MAP_FILE", "OTEL_EXPORTER_OTLP_ENDPOINT", "PIM_OTLP_ENDPOINT")}
    env.update(PIM_RATE_LIMIT_RPS="1000", PIM_RATE_LIMIT_BURST="2000", PIM_WORKER_POLL_SECONDS="0.2")
    subprocess.run([PYTHON, "-m", "pimlab.cli", "seed", "--patients", "10"], cwd=workdir, env=env,
                   check=True, capture_output=True, timeout=120)
    services = Services(workdir, free_port(), free_port(), env)
    backend = f"http://127.0.0.1:{services.backend_port}"
    try:
        services.start_backend()
        services._start("gateway", "gateway", services.gateway_port,
                        {f"PIM_{name.upper()}_URL": backend for name in ROUTED})
    except BaseException:
        services.stop()
        raise
    return services


def token(workdir: Path, persona: str, user: str) -> str:
    from dataclasses import replace

    from api_services.auth import issue_dev_token
    from api_services.config import load_settings

    settings = replace(load_settings(), dev_issuer_key_file=workdir / ".lab" / "data" / "dev-issuer.pem")
    return issue_dev_token(settings, persona, user)


def drive(services: Services, bookings: int, patient_id: str, pause: float = 0.2) -> dict[int, int]:
    """A bounded loop of real booking requests through the gateway, `pause` seconds apart (so
    several scrapes see the counters move); status -> count."""
    counts: dict[int, int] = {}
    headers = {"Authorization": f"Bearer {token(services.workdir, 'patient', patient_id)}"}
    with httpx.Client(base_url=services.gateway, headers=headers, timeout=10) as client:
        for i in range(bookings):
            resp = client.post("/encounters", json={
                "patient_id": patient_id, "provider_id": "prv-0001", "facility_id": "fac-001",
                "scheduled_for": "2025-03-01T09:30:00Z", "reason": f"slo check {i}"})
            counts[resp.status_code] = counts.get(resp.status_code, 0) + 1
            time.sleep(pause)
    return counts


def register_patient(services: Services) -> str:
    headers = {"Authorization": f"Bearer {token(services.workdir, 'admin', 'admin-slo')}"}
    resp = httpx.post(services.gateway + "/patients", headers=headers, timeout=10,
                      json={"pseudonym": "Budget Person", "birth_year": 1980, "sex": "F"})
    assert resp.status_code == 201, resp.text
    return resp.json()["patient_id"]


@dataclass
class Prometheus:
    url: str
    proc: subprocess.Popen
    log: Path

    def query(self, expr: str) -> list[dict]:
        body = httpx.get(self.url + "/api/v1/query", params={"query": expr}, timeout=5).json()
        assert body["status"] == "success", body
        return body["data"]["result"]

    def wait_scraped(self, *jobs: str) -> None:
        for job in jobs:
            wait_for(f"a successful scrape of {job}", lambda: any(
                r["value"][1] == "1" for r in self.query(f'up{{job="{job}"}}')), seconds=30, every=0.5)

    def metric_names(self) -> set[str]:
        body = httpx.get(self.url + "/api/v1/label/__name__/values", timeout=5).json()
        return set(body["data"])

    def stop(self) -> None:
        stop(self.proc)


def start_prometheus(workdir: Path, targets: dict[str, str], rule_groups: list[dict]) -> Prometheus:
    """Debian's prometheus on 127.0.0.1, scraping `targets` (job -> host:port) every second and
    evaluating `rule_groups` every second (each group's interval is shortened to 1s)."""
    binary = shutil.which("prometheus")
    if binary is None:
        import pytest

        pytest.skip("prometheus is not installed (make deps installs Debian's prometheus)")
    workdir.mkdir(parents=True, exist_ok=True)
    groups = [{**g, "interval": "1s"} for g in rule_groups]
    (workdir / "rules.yaml").write_text(yaml.safe_dump({"groups": groups}))
    (workdir / "prometheus.yml").write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": ["rules.yaml"],
        "scrape_configs": [{"job_name": job, "static_configs": [{"targets": [target]}]}
                           for job, target in targets.items()],
    }))
    port = free_port()
    log = workdir / "prometheus.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen([binary, f"--config.file={workdir / 'prometheus.yml'}",
                                 f"--storage.tsdb.path={workdir / 'data'}", f"--web.listen-address=127.0.0.1:{port}",
                                 "--storage.tsdb.retention.time=1d"],
                                cwd=workdir, stdout=out, stderr=subprocess.STDOUT)
    prom = Prometheus(f"http://127.0.0.1:{port}", proc, log)
    try:
        _wait(prom.url + "/-/ready", proc, log)
    except BaseException:
        stop(proc)
        raise
    return prom


def wait_for(what: str, fn, seconds: float = 60, every: float = 1.0):
    """Poll `fn` until it returns something truthy; fail naming `what`."""
    deadline, last = time.monotonic() + seconds, None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"{what}: not seen in {seconds} s (last: {last!r})")


_PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "offset",
                 "bool", "inf", "nan", "le"}


def promql_metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (strings, label matchers, ranges, grouping
    clauses and function calls removed first). Grafana variables count as `.*`."""
    import re

    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)          # strings
    text = re.sub(r"\{[^}]*\}", "", text)                     # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)                    # ranges and subqueries
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in re.finditer(r"[a-zA-Z_:][a-zA-Z0-9_:]*", text):
        word, after = match.group(0), text[match.end():].lstrip()[:1]
        if after == "(" or word.lower() in _PROMQL_WORDS or word.startswith("$"):
            continue
        if text[max(0, match.start() - 1)] == "$":
            continue
        names.add(word)
    return names


def known_names(prom: Prometheus) -> set[str]:
    """Every metric name the live Prometheus has samples for, plus the names its targets
    declared (HELP/TYPE) without samples yet (a counter no request has touched)."""
    names = prom.metric_names()
    meta = httpx.get(prom.url + "/api/v1/metadata", timeout=5).json()["data"]
    for name, entries in meta.items():
        names.add(name)
        kinds = {e.get("type") for e in entries}
        if "counter" in kinds:
            names.add(f"{name}_total")
        if "histogram" in kinds:
            names.update(f"{name}_{s}" for s in ("bucket", "count", "sum"))
    return names

"""The engine's configuration: exactly the JSON the operator renders into the PersonaLoad's
ConfigMap (the spec, defaults spelled out), parsed by the CRD's own model, plus what the pod's
environment adds: the target URL, this pod's index among the Job's completions, the
termination-message path and the metrics port."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from pimlab_load.journeys import STANDARD_JOURNEYS, PersonaPlan
from pimlab_load.schedule import Profile
from pimlab_operator.personaload.model import PersonaLoadSpec
from pimlab_operator.schema import duration_seconds

#: Kubernetes sets this in every pod of an Indexed Job.
INDEX_ENV = "JOB_COMPLETION_INDEX"
TERMINATION_ENV = "PIM_LOAD_TERMINATION_PATH"
DEFAULT_TERMINATION_PATH = "/dev/termination-log"
METRICS_PORT_ENV = "PIM_LOAD_METRICS_PORT"
DEFAULT_METRICS_PORT = 9464


@dataclass
class EngineConfig:
    url: str
    profile: Profile
    personas: list[PersonaPlan] = field(default_factory=list)  # empty: plain GETs of `url`
    population: int = 10000
    seed: int = 42
    max_in_flight: int = 1000
    timeout: float = 2.0
    retries: int = 0
    backoff: float = 0.2
    jitter: bool = True
    invalid_ratio: float = 0.0
    thresholds: dict | None = None
    index: int = 0
    of: int = 1
    limit: int | None = None  # stop after this many arrivals of the whole schedule
    run_key: str = "run"
    termination_path: Path | None = None
    metrics_port: int = 0
    ledger: bool = False  # record every acknowledged write and the write outages
    verify: bool = True  # with the ledger: read every write back after the load


def personas_from_spec(entries: list[dict]) -> list[PersonaPlan]:
    plans = []
    for entry in entries:
        think = entry.get("thinkTime") or {"min": "1s", "max": "5s"}
        journeys = tuple(entry.get("journeys") or STANDARD_JOURNEYS[entry["name"]])
        plans.append(PersonaPlan(entry["name"], int(entry["weight"]), journeys,
                                 duration_seconds(think["min"]), duration_seconds(think["max"])))
    return plans


def profile_from_spec(spec: dict) -> Profile:
    profile = spec["profile"]
    bursts = (spec.get("failurePressure") or {}).get("bursts")
    return Profile(
        pattern=profile.get("pattern", "constant"), rate=float(profile["rate"]),
        peak_rate=float(profile["peakRate"]) if profile.get("peakRate") is not None else None,
        duration=duration_seconds(profile.get("duration", "10m")),
        ramp_up=duration_seconds(profile["rampUp"]) if profile.get("rampUp") else 0.0,
        burst_every=duration_seconds(bursts["every"]) if bursts else None,
        burst_factor=float(bursts["factor"]) if bursts else 1.0,
        burst_length=duration_seconds(bursts["length"]) if bursts else 0.0)


def termination_path(env: dict) -> Path | None:
    """The env's path, else the kubelet's default where it exists (inside a pod)."""
    if env.get(TERMINATION_ENV):
        return Path(env[TERMINATION_ENV])
    default = Path(DEFAULT_TERMINATION_PATH)
    return default if default.exists() else None


def from_spec(raw: dict, env: dict | None = None, url: str | None = None) -> EngineConfig:
    """The ConfigMap's config.json (validated by PersonaLoadSpec) and the pod's environment."""
    env = dict(os.environ if env is None else env)
    spec = PersonaLoadSpec.model_validate(raw).to_k8s()
    target = url or env.get("PIM_LOAD_TARGET_URL") or spec["target"].get("url")
    if not target:
        raise ValueError("no target: set PIM_LOAD_TARGET_URL (the operator does) or spec.target.url")
    pressure = spec.get("failurePressure") or {}
    ledger = spec.get("ledger") or {}
    retries = pressure.get("retries") or {}
    of = int(env.get("PIM_LOAD_PARALLELISM") or spec.get("parallelism") or 1)
    index = int(env.get(INDEX_ENV) or 0)
    if not 0 <= index < of:
        raise ValueError(f"{INDEX_ENV}={index} is outside 0..{of - 1}")
    return EngineConfig(
        url=target.rstrip("/"), profile=profile_from_spec(spec), personas=personas_from_spec(spec["personas"]),
        population=spec["population"]["patients"], seed=spec["population"]["seed"],
        max_in_flight=spec["maxInFlight"], timeout=duration_seconds(pressure.get("timeout", "2s")),
        retries=retries.get("max", 0), backoff=duration_seconds(retries.get("backoff", "200ms")),
        jitter=retries.get("jitter", True), invalid_ratio=pressure.get("invalidRequestRatio", 0.0),
        thresholds=spec.get("thresholds"), index=index, of=of,
        run_key=env.get("PIM_LOAD_RUN_ID") or env.get("PIM_LOAD_RUN") or f"run{os.getpid()}",
        termination_path=termination_path(env),
        metrics_port=int(env.get(METRICS_PORT_ENV, DEFAULT_METRICS_PORT)),
        ledger=ledger.get("enabled", False), verify=ledger.get("verify", True))


def load_file(path: str | Path, env: dict | None = None) -> EngineConfig:
    return from_spec(json.loads(Path(path).read_text()), env)

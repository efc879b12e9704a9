"""The persona engine against the real services (embedded default, 3 SQLite shards): every
persona and every journey runs with zero unexpected errors, over patients on every shard;
invalid requests are refused with a 4xx and are not errors; `pimlab load run --config` takes
the configuration the operator renders."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

import pytest

from pimlab_load.config import from_spec
from pimlab_load.dispatch import Engine
from pimlab_load.journeys import JOURNEY_ROLES, STANDARD_JOURNEYS
from pimlab_load.report import from_wire, summary
from pimlab_operator.personaload.model import PersonaLoadSpec

THINK = {"min": "0s", "max": "20ms"}


def spec(server, personas: list[dict], rate: float = 12, duration: str = "2s", **extra) -> dict:
    return {"target": {"url": server.url}, "personas": personas, "population": {"patients": 40, "seed": 7},
            "profile": {"rate": rate, "duration": duration}, "failurePressure": {"timeout": "10s"}, **extra}


@pytest.fixture
def engine_env(server, monkeypatch):
    """Tokens from the server's development issuer, as `pimlab token` makes them."""
    monkeypatch.setenv("PIM_DATA_DIR", str(server.data_dir))
    return {"PIM_DATA_DIR": str(server.data_dir), "PIM_LOAD_METRICS_PORT": "0"}


def run(raw: dict, env: dict) -> dict:
    cfg = from_spec(raw, env)
    return summary(asyncio.run(Engine(cfg).run()), cfg.thresholds)


@pytest.mark.parametrize("journey", list(JOURNEY_ROLES))
def test_each_journey_runs_without_unexpected_errors(server, engine_env, journey):
    persona = JOURNEY_ROLES[journey][0]
    out = run(spec(server, [{"name": persona, "weight": 1, "journeys": [journey], "thinkTime": THINK}]), engine_env)
    assert out["errors"] == 0, out["byStatus"]
    assert out["journeys"] > 0 and out["byJourney"][journey]["requests"] >= out["journeys"]
    assert not set(out["byStatus"]) - {"200", "201", "202"}


@pytest.mark.parametrize("persona", list(STANDARD_JOURNEYS))
def test_each_persona_runs_its_standard_journeys(server, engine_env, persona):
    """`{name: patient, weight: 3}`: a persona without journeys runs its standard ones."""
    out = run(spec(server, [{"name": persona, "weight": 3, "thinkTime": THINK}], rate=20, duration="3s"), engine_env)
    assert out["errors"] == 0, out["byStatus"]
    assert set(out["byJourney"]) == set(STANDARD_JOURNEYS[persona])
    assert set(out["byPersona"]) == {persona}


def test_mixed_personas_reach_every_shard_and_invalid_requests_are_refused(server, engine_env):
    personas = [{"name": "patient", "weight": 3, "thinkTime": THINK}, {"name": "clinician", "weight": 1, "thinkTime": THINK},
                {"name": "admin", "weight": 1, "thinkTime": THINK}]
    out = run(spec(server, personas, rate=25, duration="3s",
                   failurePressure={"timeout": "10s", "invalidRequestRatio": 0.2,
                                    "retries": {"max": 2, "backoff": "50ms"}},
                   thresholds={"errorRatio": 0.0, "p99": "10s"}), engine_env)
    assert out["errors"] == 0, out["byStatus"]
    assert {"shard-00", "shard-01", "shard-02"} <= set(out["byShard"])
    assert set(out["byPersona"]) == {"patient", "clinician", "admin"}
    assert out["invalidRequests"] > 0
    refused = sum(n for code, n in out["byStatus"].items() if code.startswith("4"))
    assert refused == out["invalidRequests"]
    assert out["thresholdsMet"] is True


def test_load_run_takes_the_rendered_config(server, engine_env, tmp_path):
    """What the operator renders (the spec, defaults spelled out) is what `load run` reads; the
    termination message carries the merged-ready report."""
    raw = PersonaLoadSpec.model_validate(spec(server, [{"name": "admin", "weight": 1, "thinkTime": THINK}])).to_k8s()
    config = tmp_path / "config.json"
    config.write_text(json.dumps(raw))
    message = tmp_path / "termination-log"
    env = {**os.environ, **engine_env, "PIM_LOAD_TARGET_URL": server.url, "JOB_COMPLETION_INDEX": "1",
           "PIM_LOAD_PARALLELISM": "2", "PIM_LOAD_TERMINATION_PATH": str(message)}
    proc = subprocess.run([sys.executable, "-m", "pimlab.cli", "load", "run", "--config", str(config)],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout)
    assert out["pod"] == {"index": 1, "of": 2} and out["errors"] == 0
    assert out["scheduled"] == 12  # its half of 24 arrivals (odd indices)
    rec, pod, _ = from_wire(message.read_text())
    assert pod == (1, 2) and rec.requests == out["requests"]

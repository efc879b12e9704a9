"""`pimlab load run --config FILE` (what the PersonaLoad Job runs) and `pimlab load --url …`
(a quick run from the shell). Both print the JSON summary; thresholds set the exit code."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time
from pathlib import Path

from pydantic import ValidationError

from pimlab_load.config import from_spec, load_file
from pimlab_load.dispatch import Engine
from pimlab_load.ledger import status_fields
from pimlab_load.metrics import Metrics
from pimlab_load.report import summary, to_wire

#: Exit code of a run whose thresholds did not hold (the run itself worked).
THRESHOLDS_MISSED = 99
#: Exit code of a configuration the engine refuses.
BAD_CONFIG = 2


def _persona_entries(text: str | None, think: str | None) -> list[dict]:
    """`patient:3,clinician,admin:1` -> PersonaLoad persona entries (standard journeys)."""
    if not text:
        return []
    entries = []
    for part in text.split(","):
        name, _, weight = part.strip().partition(":")
        entry = {"name": name, "weight": int(weight or 1)}
        if think:
            low, _, high = think.partition(",")
            entry["thinkTime"] = {"min": low, "max": high or low}
        entries.append(entry)
    return entries


def _thresholds(text: str | None) -> dict | None:
    """`p95=300ms,errorRatio=0.01`."""
    if not text:
        return None
    out: dict = {}
    for part in text.split(","):
        key, _, value = part.partition("=")
        out[key.strip()] = float(value) if key.strip() == "errorRatio" else value.strip()
    return out


def quick_spec(args) -> dict:
    """The flags as a PersonaLoad spec, so both commands share one validation."""
    profile = {"pattern": args.pattern, "rate": args.rate, "duration": args.duration}
    if args.peak_rate is not None:
        profile["peakRate"] = args.peak_rate
    personas = _persona_entries(args.personas, args.think)
    spec = {"target": {"url": args.url}, "personas": personas or [{"name": "patient", "weight": 1}],
            "profile": profile, "maxInFlight": args.max_in_flight,
            "population": {"patients": args.patients, "seed": args.seed},
            "failurePressure": {"timeout": args.timeout, "invalidRequestRatio": args.invalid_ratio,
                                "retries": {"max": args.retries}}}
    if args.thresholds:
        spec["thresholds"] = _thresholds(args.thresholds)
    if args.ledger:
        spec["ledger"] = {"enabled": True}
    return spec


def run_loop(coroutine):
    """uvloop where it is installed (about twice the requests per core), else asyncio's loop."""
    try:
        import uvloop  # optional: not built for every platform
    except ImportError:
        return asyncio.run(coroutine)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coroutine)


def execute(cfg, print_summary=print) -> int:
    """Run the engine; print the summary, write the termination message, return the exit code."""
    metrics = None
    if cfg.metrics_port:
        metrics = Metrics(cfg.run_key, cfg.index)
        metrics.serve(cfg.metrics_port)
    engine = Engine(cfg, metrics)
    cpu = time.process_time()
    rec = run_loop(engine.run())
    cpu = time.process_time() - cpu - engine.verify_cpu
    result = summary(rec, cfg.thresholds)
    result["pod"] = {"index": cfg.index, "of": cfg.of}
    # the engine's own CPU: requests per CPU second is its capacity on an idle core
    result["cpuSeconds"] = round(cpu, 3)
    result.update(status_fields(rec.ledger, rec.outages, rec.slowest))
    if cfg.termination_path:
        try:
            cfg.termination_path.write_text(to_wire(rec, cfg.index, cfg.of))
        except OSError as error:
            logging.getLogger("pimlab_load").error("cannot write %s: %s", cfg.termination_path, error)
    print_summary(json.dumps(result, indent=2))
    return THRESHOLDS_MISSED if result.get("thresholdsMet") is False else 0


def _run(args) -> int:
    try:
        cfg = load_file(args.config)
    except (OSError, ValueError, ValidationError) as error:
        print(f"pimlab load run: invalid configuration {args.config}: {error}", file=sys.stderr)
        return BAD_CONFIG
    if args.count is not None:
        cfg.limit = args.count
    return execute(cfg)


def _quick(args) -> int:
    if not args.url or args.rate is None:
        print("pimlab load: --url and --rate are required (or use `pimlab load run --config FILE`)", file=sys.stderr)
        return BAD_CONFIG
    env = {k: v for k, v in os.environ.items() if k not in ("PIM_LOAD_TARGET_URL", "JOB_COMPLETION_INDEX",
                                                            "PIM_LOAD_PARALLELISM")}
    env.setdefault("PIM_LOAD_METRICS_PORT", str(args.metrics_port))
    try:
        cfg = from_spec(quick_spec(args), env)
    except (ValueError, ValidationError) as error:
        print(f"pimlab load: {error}", file=sys.stderr)
        return BAD_CONFIG
    if not args.personas:
        cfg.personas = []  # plain GETs of the URL
    cfg.limit = args.count
    return execute(cfg)


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    load = subparsers.add_parser(
        "load", help="the persona engine: open-model load with honest latency",
        description="A quick run: `pimlab load --url URL --rate R --duration 30s [--personas patient:3,admin]`"
                    " (without --personas: GETs of URL). `pimlab load run --config FILE`: the PersonaLoad config.")
    load.add_argument("--url", help="target: a gateway base URL, or any URL for plain GETs")
    load.add_argument("--rate", type=float, help="arrivals per second")
    load.add_argument("--duration", default="30s", help="e.g. 30s, 5m (default 30s)")
    load.add_argument("--pattern", default="constant", choices=("constant", "ramp", "spike", "diurnal"))
    load.add_argument("--peak-rate", type=float, help="for ramp, spike and diurnal")
    load.add_argument("--personas", help="e.g. patient:3,clinician:1,admin:1 (standard journeys)")
    load.add_argument("--think", help="think time `min,max` between steps, e.g. 0s,1s (default 1s,5s)")
    load.add_argument("--patients", type=int, default=1000, help="synthetic population (default 1000)")
    load.add_argument("--seed", type=int, default=42)
    load.add_argument("--max-in-flight", type=int, default=1000)
    load.add_argument("--timeout", default="2s")
    load.add_argument("--retries", type=int, default=0)
    load.add_argument("--invalid-ratio", type=float, default=0.0)
    load.add_argument("--thresholds", help="e.g. p95=300ms,p99=1s,errorRatio=0.01 (missed: exit 99)")
    load.add_argument("--count", type=int, help="stop after this many arrivals")
    load.add_argument("--ledger", action="store_true",
                      help="record every acknowledged write and the write outages, read the writes back at the end")
    load.add_argument("--metrics-port", type=int, default=0, help="serve Prometheus metrics (default off)")
    load.set_defaults(func=_quick)
    sub = load.add_subparsers(dest="load_command", metavar="ACTION")
    run = sub.add_parser("run", help="run the configuration a PersonaLoad's ConfigMap holds")
    run.add_argument("--config", required=True, type=Path)
    run.add_argument("--count", type=int, help="stop after this many arrivals of the whole schedule")
    run.set_defaults(func=_run)

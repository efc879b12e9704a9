"""`pimlab drill run NAME`: a Drill declared in a file, started on the running lab, followed to
its verdict, and its report written (what `make drill` runs).

An earlier Drill of the same name is deleted first (its finalizer stops whatever it still ran),
so a run always starts from Pending with the file's spec."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import yaml

from pimlab.report import cli as report_cli
from pimlab.report import cluster as report_cluster
from pimlab.waiting import wait_for
from pimlab_operator import kube
from pimlab_operator.drill.model import DrillSpec
from pimlab_operator.schema import API_VERSION, duration_seconds

ROOT = Path(__file__).resolve().parent.parent
ENDED = ("Passed", "Failed", "Aborted")
#: Beyond the Drill's own deadline: the operator aborts it then; this only bounds the wait.
FOLLOW_SLACK_SECONDS = 120


def declared(path: Path, name: str) -> dict:
    for doc in yaml.safe_load_all(path.read_text()):
        if doc and doc.get("kind") == "Drill" and doc["metadata"]["name"] == name:
            return doc
    raise LookupError(f"{path}: no Drill named {name!r}")


def start(drill: dict, namespace: str) -> None:
    """Apply `drill` in `namespace`, after deleting an earlier run of the same name."""
    name = drill["metadata"]["name"]
    if kube.get(API_VERSION, "Drill", name, namespace) is not None:
        print(f"..   deleting the earlier Drill {namespace}/{name} (its finalizer stops what it ran)", flush=True)
        kube.delete(API_VERSION, "Drill", name, namespace)
        wait_for(lambda: kube.get(API_VERSION, "Drill", name, namespace) is None, timeout=120,
                 what=f"the earlier Drill {namespace}/{name} to go")
    kube.apply({**drill, "metadata": {**drill["metadata"], "namespace": namespace}})


def follow(name: str, namespace: str, timeout: float, out=sys.stdout) -> dict:
    """Print each phase as the Drill enters it; return the Drill once it has a verdict."""
    started, phase = time.monotonic(), None
    while time.monotonic() - started < timeout:
        drill = kube.get(API_VERSION, "Drill", name, namespace) or {}
        status = drill.get("status") or {}
        if status.get("phase") != phase:
            phase = status.get("phase")
            detail = status.get("message") or status.get("reason") or ""
            print(f"..   {time.monotonic() - started:5.0f} s  {phase or 'waiting for the operator'}"
                  f"{'  ' + detail if detail else ''}", file=out, flush=True)
        if phase in ENDED:
            return drill
        time.sleep(2)
    raise TimeoutError(f"Drill {namespace}/{name} has no verdict after {timeout:.0f} s (phase {phase})")


def verdict_lines(drill: dict) -> list[str]:
    status = drill.get("status") or {}
    ledger, recovery = status.get("ledger") or {}, status.get("recovery") or {}
    lines = [f"Drill {drill['metadata']['namespace']}/{drill['metadata']['name']}: {status.get('verdict')} "
             f"(score {status.get('score')}){'  ' + status['message'] if status.get('message') else ''}",
             f"  recovery (RTO, clients): {recovery.get('seconds')} s; writes acknowledged {ledger.get('acknowledged')}, "
             f"verified {ledger.get('verified')}, lost {ledger.get('lost')}"]
    for hypothesis in status.get("hypotheses") or []:
        mark = "met   " if hypothesis.get("met") else "MISSED"
        lines.append(f"  {mark} {hypothesis['name']}: observed {hypothesis.get('observed')}, "
                     f"limit {hypothesis.get('limit')}  ({hypothesis.get('source') or ''})")
    return lines


def run(args) -> int:
    try:
        drill = declared(Path(args.file), args.name)
    except (LookupError, OSError) as error:
        print(f"pimlab drill run: {error}", file=sys.stderr)
        return 1
    spec = DrillSpec.model_validate(drill["spec"])
    report_cluster.use_the_labs_kubeconfig(ROOT)
    start(drill, args.namespace)
    print(f"..   Drill {args.namespace}/{args.name} started (deadline {spec.timeout})", flush=True)
    ended = follow(args.name, args.namespace, duration_seconds(spec.timeout) + FOLLOW_SLACK_SECONDS)
    print("\n".join(verdict_lines(ended)))
    out_dir = Path(args.report or ROOT / ".lab" / "reports" / args.name)
    written = report_cli.write_report(args.name, args.namespace, out_dir, args.prometheus)
    print(f"report: {next((p for p in written if p.suffix == '.html'), out_dir)}")
    return 0 if (ended.get("status") or {}).get("verdict") == "Passed" else 2


def add_commands(sub: argparse._SubParsersAction) -> None:
    drill = sub.add_parser("drill", help="run a declared Drill on the lab").add_subparsers(
        dest="drill", required=True, metavar="WHAT")
    run_parser = drill.add_parser("run", help="start a Drill from its file, follow it to its verdict, write its report")
    run_parser.add_argument("name", help="the Drill's name in the file")
    run_parser.add_argument("-n", "--namespace", default="lab", help="where to run it (default lab)")
    run_parser.add_argument("--file", default=str(ROOT / "samples" / "60-drills.yaml"),
                            help="the file declaring it (default samples/60-drills.yaml)")
    run_parser.add_argument("--report", help="report directory (default .lab/reports/NAME)")
    run_parser.add_argument("--prometheus", help="Prometheus URL for the report (default: the Lab's)")
    run_parser.set_defaults(func=run)

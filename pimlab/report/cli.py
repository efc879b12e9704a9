"""`pimlab report drill NAME [-n NS] --out DIR [--prometheus URL]`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import urllib3

from pimlab.report import cluster, document
from pimlab.report.drill import build
from pimlab_operator import kube


def write_report(name: str, namespace: str, out_dir: Path, prometheus_url: str | None) -> list[Path]:
    """Read the Drill and what it names, write its report into `out_dir`; say which figures are
    missing and why (stderr). Raises what reading the cluster raises."""
    evidence = cluster.read(name, namespace, prometheus_url)
    report = build(evidence.drill, evidence.slos, evidence.prometheus_url, evidence.slowest, evidence.logs)
    for section in report.sections:
        if section.missing:
            print(f"figure missing: {section.title}: {section.missing}", file=sys.stderr)
    return document.write(report, out_dir)


def report_drill(args) -> int:
    cluster.use_the_labs_kubeconfig(Path(__file__).resolve().parents[2])
    try:
        written = write_report(args.name, args.namespace, Path(args.out), args.prometheus)
    except (LookupError, kube.ApiError, urllib3.exceptions.HTTPError, OSError, RuntimeError) as error:
        print(f"pimlab report drill: {error}", file=sys.stderr)
        return 1
    for path in written:
        print(path)
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    report = sub.add_parser("report", help="reports of the lab's runs").add_subparsers(
        dest="report", required=True, metavar="WHAT")
    drill = report.add_parser("drill", help="a Drill's report: HTML, Markdown and PNG plots")
    drill.add_argument("name", help="the Drill's name")
    drill.add_argument("-n", "--namespace", default="lab", help="its namespace (default lab)")
    drill.add_argument("--out", required=True, help="directory to write report.html, report.md and the PNGs into")
    drill.add_argument("--prometheus", help="Prometheus URL (default: the Lab's spec.observability.prometheusUrl)")
    drill.set_defaults(func=report_drill)

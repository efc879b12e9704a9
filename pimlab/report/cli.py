"""`pimlab report drill NAME [-n NS] --out DIR [--prometheus URL]`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import urllib3

from pimlab.report import cluster, document
from pimlab.report.drill import build
from pimlab_operator import kube


def report_drill(args) -> int:
    cluster.use_the_labs_kubeconfig(Path(__file__).resolve().parents[2])
    try:
        evidence = cluster.read(args.name, args.namespace, args.prometheus)
    except (LookupError, kube.ApiError, urllib3.exceptions.HTTPError, OSError, RuntimeError) as error:
        print(f"pimlab report drill: {error}", file=sys.stderr)
        return 1
    report = build(evidence.drill, evidence.slos, evidence.prometheus_url, evidence.slowest, evidence.logs)
    for path in document.write(report, Path(args.out)):
        print(path)
    for section in report.sections:
        if section.missing:
            print(f"figure missing: {section.title}: {section.missing}", file=sys.stderr)
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

"""The operator's `pimlab` sub-commands; `pimlab.cli` collects them through `add_commands`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pimlab_operator import crdgen, docgen, main
from pimlab_operator.config import load_settings, project_home


def _generated(args: argparse.Namespace, generator, command: str) -> int:
    """Write (or, with --check, verify) files generated from the models."""
    out_dir = Path(args.out_dir)
    if args.check:
        stale = generator.stale_files(out_dir)
        for name in stale:
            print(f"stale: {out_dir / name} (run `pimlab {command}`)", file=sys.stderr)
        return 1 if stale else 0
    for path in generator.write(out_dir):
        print(path)
    return 0


def _crds(args: argparse.Namespace) -> int:
    """The CRD YAML generated from the models."""
    return _generated(args, crdgen, "crds")


def _docs(args: argparse.Namespace) -> int:
    """The CRD reference generated from the same schema."""
    return _generated(args, docgen, "docs")


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Register the operator's commands; each sets `func(args) -> int`."""
    crds = subparsers.add_parser("crds", help="generate the CRDs in crds/ from the pydantic models")
    crds.add_argument("--out-dir", default=str(project_home() / "crds"), help="directory for <plural>.pim-sre.lab.yaml files")
    crds.add_argument("--check", action="store_true", help="exit 1 if the files differ from the models")
    crds.set_defaults(func=_crds)
    docs = subparsers.add_parser("docs", help="generate the CRD reference docs/reference/crds.md from the models")
    docs.add_argument("--out-dir", default=str(project_home() / "docs" / "reference"), help="directory for crds.md")
    docs.add_argument("--check", action="store_true", help="exit 1 if the reference differs from the models")
    docs.set_defaults(func=_docs)
    add_operator_commands(subparsers)


def _operator_run(args: argparse.Namespace) -> int:
    main.run(load_settings(prometheus_url=args.prometheus_url, namespaces=tuple(args.namespace or ()),
                           host=args.host, metrics_port=args.metrics_port, health_port=args.health_port,
                           log_format=args.log_format, verbose=args.verbose))
    return 0


def add_operator_commands(subparsers: argparse._SubParsersAction) -> None:
    operator = subparsers.add_parser("operator", help="the kopf operator")
    actions = operator.add_subparsers(dest="action", required=True, metavar="ACTION")
    run = actions.add_parser("run", help="reconcile Lab, Shard, PersonaLoad, ChaosExperiment, SLO")
    run.add_argument("--namespace", "-n", action="append",
                     help="watch only this namespace (repeatable); default: every namespace")
    run.add_argument("--host", default="0.0.0.0", help="address for metrics and health")
    run.add_argument("--metrics-port", type=int, default=9095, help="Prometheus /metrics port")
    run.add_argument("--health-port", type=int, default=8081, help="liveness /healthz port")
    run.add_argument("--log-format", choices=("json", "text"), default="json")
    run.add_argument("--verbose", action="store_true")
    run.add_argument("--prometheus-url", default=None,
                     help="Prometheus the SLOs' error budgets are read from where no Lab in their namespace"
                          " names one (also $PIMLAB_PROMETHEUS_URL)")
    run.set_defaults(func=_operator_run)

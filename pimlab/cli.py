"""`pimlab`: the one entry point the Makefile, the image and the docs call.

Each area of the project adds its own sub-commands through an `add_commands(subparsers)`
function, so this file stays a table of contents.
"""

from __future__ import annotations

import argparse
import sys

from api_services import cli as services_cli
from pimlab import drills as drill_cli
from pimlab import kind as kind_cli
from pimlab.cluster import cli as cluster_cli
from pimlab.docs import check as docs_check
from pimlab.instance import cli as instance_cli
from pimlab.report import cli as report_cli
from pimlab_load import cli as load_cli
from pimlab_operator import cli as operator_cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pimlab", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    cluster_cli.add_commands(sub)
    cluster_cli.add_lab_commands(sub)
    cluster_cli.add_gitops_commands(sub)
    kind_cli.add_commands(sub)
    operator_cli.add_commands(sub)
    services_cli.add_commands(sub)
    load_cli.add_commands(sub)
    instance_cli.add_commands(sub)
    docs_check.add_commands(sub)
    report_cli.add_commands(sub)
    drill_cli.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())

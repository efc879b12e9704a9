"""`pimlab serve|seed|token|audit verify|replay`: the services' commands, added to the pimlab CLI."""

from __future__ import annotations

import argparse
import json
import os
import sys

import uvicorn

from api_services.app import build_app
from api_services.auth import issue_dev_token
from api_services.catalog import NAMES
from api_services.config import load_settings
from api_services.integrity import replay, verify_audit
from api_services.runtime import Runtime
from api_services.seed import seed
from api_services.telemetry import setup_logging


def _serve(args) -> int:
    settings = load_settings()
    setup_logging(settings.log_level)
    app = build_app(args.service, settings)
    uvicorn.run(app, host=args.host, port=args.port, log_config=None, access_log=False,
                timeout_graceful_shutdown=5)
    return 0


def _engines() -> Runtime:
    return Runtime(load_settings(), "cli")


def _seed(args) -> int:
    rt = _engines()
    counts = seed(rt.engines, rt.shard_map, args.seed, args.patients)
    print(json.dumps({"seed": args.seed, "created": counts}))
    rt.engines.dispose()
    return 0


def _token(args) -> int:
    try:
        print(issue_dev_token(load_settings(), args.persona, args.user, args.ttl))
    except ValueError as exc:
        print(f"pimlab token: {exc}", file=sys.stderr)
        return 2
    return 0


def _audit_verify(args) -> int:
    rt = _engines()
    report = verify_audit(rt.engines)
    print(json.dumps(report, indent=2))
    return 0 if report["ok"] else 1


def _replay(args) -> int:
    rt = _engines()
    report = replay(rt.engines)
    print(json.dumps(report, indent=2))
    return 0 if report["ok"] else 1


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    serve = subparsers.add_parser("serve", help="run one API service, or all of them in one process")
    serve.add_argument("--service", required=True, choices=NAMES + ("all",))
    serve.add_argument("--port", type=int, default=int(os.environ.get("PIM_PORT", "8080")))
    serve.add_argument("--host", default=os.environ.get("PIM_HOST", "127.0.0.1"))
    serve.set_defaults(func=_serve)

    seed = subparsers.add_parser("seed", help="write deterministic synthetic data into the shards")
    seed.add_argument("--seed", type=int, default=42)
    seed.add_argument("--patients", type=int, default=200)
    seed.set_defaults(func=_seed)

    token = subparsers.add_parser("token", help="print a token from the lab's development issuer")
    token.add_argument("--persona", required=True, choices=("patient", "clinician", "admin", "sre"))
    token.add_argument("--user", required=True)
    token.add_argument("--ttl", type=int, default=3600, help="lifetime in seconds")
    token.set_defaults(func=_token)

    audit = subparsers.add_parser("audit", help="audit log commands")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True, metavar="ACTION")
    verify = audit_sub.add_parser("verify", help="check every shard's audit hash chain")
    verify.set_defaults(func=_audit_verify)

    replay = subparsers.add_parser("replay", help="rebuild state from the events and diff it with the tables")
    replay.set_defaults(func=_replay)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pimlab")
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())

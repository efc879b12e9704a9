"""`python -m pimlab.cluster.images build|ensure|status`: the node's images from the command
line (`make image` runs `build`)."""

from __future__ import annotations

import argparse
import json
import sys
import time

from pimlab.cluster.images import ALL_IMAGES, build, ensure, status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pimlab.cluster.images",
                                     description="the node's images, built without a registry")
    sub = parser.add_subparsers(dest="command", required=True)
    p_build = sub.add_parser("build", help="build what changed (default: every image)")
    p_build.add_argument("refs", nargs="*", default=list(ALL_IMAGES))
    p_ensure = sub.add_parser("ensure", help="build, then import into a containerd what it lacks")
    p_ensure.add_argument("--address", required=True, help="containerd's socket")
    p_ensure.add_argument("refs", nargs="*", default=list(ALL_IMAGES))
    sub.add_parser("status", help="the cached images, as JSON")
    args = parser.parse_args(argv)

    if args.command == "build":
        for ref in args.refs:
            started = time.monotonic()
            built = build(ref, log=sys.stderr)
            size = built.archive.stat().st_size / 2**20
            print(f"{ref:52} {'built' if built.rebuilt else 'up to date':10} "
                  f"{time.monotonic() - started:7.1f} s {size:8.1f} MiB  {built.archive}")
    elif args.command == "ensure":
        for ref, what in ensure(args.refs, args.address, log=sys.stderr).items():
            print(f"{ref:52} {what}")
    else:
        print(json.dumps(status(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`python -m pimlab.cluster.images build|ensure|status`: the node's images from the command
line (`make image` runs `build`), one progress line per image, the builders' output in
`.lab/logs/`."""

from __future__ import annotations

import argparse
import json
import sys
from functools import partial

from pimlab.cluster.images import ALL_IMAGES, build_step, ensure, status
from pimlab.cluster.progress import run_steps


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
        return run_steps(*(partial(build_step, ref) for ref in args.refs))
    if args.command == "ensure":
        return run_steps(partial(ensure, args.refs, args.address))
    print(json.dumps(status(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

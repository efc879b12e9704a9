"""`pimlab cluster up|down|status|build`: the local control plane from the command line."""

from __future__ import annotations

import sys

from pimlab import controlplane_build
from pimlab.controlplane import ControlPlaneError, LocalControlPlane


def _up(args) -> int:
    plane = LocalControlPlane(args.root, log=sys.stdout)
    try:
        plane.up()
    except (ControlPlaneError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(plane.status())
    lay = plane.layout
    print(
        f"\nThe control plane is up at {lay.server}.\n"
        f"  export KUBECONFIG={lay.kubeconfig}\n"
        f"  export PATH={lay.bin}:$PATH\n"
        "  kubectl get nodes\n"
        "Stop it with `make cluster-down` (or `pimlab cluster down`)."
    )
    return 0


def _down(args) -> int:
    LocalControlPlane(args.root, log=sys.stdout).down()
    print("control plane stopped; its state under .lab/ is removed")
    return 0


def _status(args) -> int:
    print(LocalControlPlane(args.root).status())
    return 0


def _build(args) -> int:
    try:
        print(controlplane_build.build(log=sys.stdout))
    except RuntimeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


def add_commands(sub) -> None:
    cluster = sub.add_parser("cluster", help="the local Kubernetes control plane (etcd, "
                             "apiserver, controller-manager, scheduler, kwok)")
    cluster.add_argument("--root", default=".", help="working tree whose .lab/ holds the state")
    actions = cluster.add_subparsers(dest="action", required=True, metavar="ACTION")
    actions.add_parser("up", help="build if needed, start, wait for Ready nodes").set_defaults(func=_up)
    actions.add_parser("down", help="stop every process and remove the state").set_defaults(func=_down)
    actions.add_parser("status", help="which components run").set_defaults(func=_status)
    actions.add_parser("build", help="compile the binaries into the cache").set_defaults(func=_build)

"""`pimlab cluster up|down|status|build` and `pimlab lab up|down`: the local cluster and the
lab on it, from the command line."""

from __future__ import annotations

import sys

from pimlab.cluster import build
from pimlab.cluster.local import LocalCluster
from pimlab.cluster.procs import ClusterError


def _up(args) -> int:
    plane = LocalCluster(args.root, log=sys.stdout)
    try:
        plane.up()
    except (ClusterError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(plane.status())
    lay = plane.layout
    print(
        f"\nThe cluster is up at {lay.server} (node: {plane.node_mode()}).\n"
        f"  export KUBECONFIG={lay.kubeconfig}\n"
        f"  export PATH={lay.bin}:$PATH\n"
        "  kubectl get nodes\n"
        "Stop it with `make cluster-down` (or `pimlab cluster down`)."
    )
    return 0


def _down(args) -> int:
    LocalCluster(args.root, log=sys.stdout).down()
    print("cluster stopped; its state under .lab/ and its node's traces on the machine are removed")
    return 0


def _status(args) -> int:
    print(LocalCluster(args.root).status())
    return 0


def _build(args) -> int:
    try:
        print(build.build(log=sys.stdout))
        print(build.build_addons(log=sys.stdout))
    except RuntimeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


def add_commands(sub) -> None:
    cluster = sub.add_parser("cluster", help="the local Kubernetes cluster (etcd, apiserver, "
                             "controller-manager, scheduler, kwok nodes and, where containers "
                             "can run, a real node; PIMLAB_NODE=auto|real|kwok)")
    cluster.add_argument("--root", default=".", help="working tree whose .lab/ holds the state")
    actions = cluster.add_subparsers(dest="action", required=True, metavar="ACTION")
    actions.add_parser("up", help="build if needed, start, wait for Ready nodes").set_defaults(func=_up)
    actions.add_parser("down", help="stop every process and remove the state").set_defaults(func=_down)
    actions.add_parser("status", help="which components run").set_defaults(func=_status)
    actions.add_parser("build", help="compile the binaries (control plane, node, add-ons) into the cache").set_defaults(func=_build)


def _lab_up(args) -> int:
    from pimlab.cluster.local_lab import LocalLab

    lab = LocalLab(args.root)
    try:
        lab.up(samples=not args.no_samples, local_operator=args.local_operator)
    except (ClusterError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if not args.no_samples:
        proc = lab.plane.kubectl("wait", "--for=condition=Ready", "lab", "--all", "-n", "lab",
                                 f"--timeout={args.wait}s", check=False, timeout=args.wait + 10)
        print(proc.stdout + proc.stderr, end="")
        if proc.returncode != 0:
            print(lab.state())
            print("error: the sample Lab did not become Ready (kubectl get lab -n lab -o wide says why)",
                  file=sys.stderr)
            return 1
        if lab.plane.real_node:
            print(f"seeding the shards: {lab.seed()}")
    print(lab.state())
    if lab.operator_runs_as_pod():
        operator = "Operator: a pod on the real node (kubectl -n pim-system logs deployment/pimlab-operator)"
    else:
        operator = f"Operator log: {lab.operator_log}"
    print(f"The lab is up (node: {lab.plane.node_mode()}). {operator}\n"
          f"  export KUBECONFIG={lab.plane.layout.kubeconfig} PATH={lab.plane.layout.bin}:$PATH\n"
          "  kubectl get pimlab -A\n"
          "The gateway from the host:\n"
          f"{lab.gateway_hint()}\n"
          "Prometheus (prometheus-operator's, scraping the Lab's ServiceMonitor, evaluating the SLOs' rules):\n"
          f"{lab.prometheus_hint()}\n"
          "Stop everything with `make lab-down`.")
    return 0


def _lab_down(args) -> int:
    from pimlab.cluster.local_lab import LocalLab

    LocalLab(args.root).down()
    print("operator and control plane stopped")
    return 0


def add_lab_commands(sub) -> None:
    lab = sub.add_parser("lab", help="the whole lab on the local control plane")
    lab.add_argument("--root", default=".", help="working tree whose .lab/ holds the state")
    actions = lab.add_subparsers(dest="action", required=True, metavar="ACTION")
    up = actions.add_parser("up", help="control plane, CRDs, operator, samples")
    up.add_argument("--no-samples", action="store_true", help="do not apply samples/")
    up.add_argument("--wait", type=int, default=180, help="seconds to wait for the sample Lab")
    up.add_argument("--local-operator", action="store_true",
                    help="run the operator as a local process (development), not as a pod")
    up.set_defaults(func=_lab_up)
    actions.add_parser("down", help="stop the operator and the control plane").set_defaults(func=_lab_down)

"""`pimlab cluster up|down|status|build` and `pimlab lab up|down`: the local cluster and the
lab on it, from the command line."""

from __future__ import annotations

import sys

from pimlab.cluster import build
from pimlab.cluster.gitops import GitOps
from pimlab.cluster.lab import LocalLab
from pimlab.cluster.local_cluster import LocalCluster
from pimlab.cluster.procs import ClusterError
from pimlab.cluster.progress import run_steps
from pimlab_operator.render import project_home


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
    return run_steps(build.build_step, build.addons_step, root=args.root)


def _build_kwok(args) -> int:
    return run_steps(build.kwok_step, root=args.root)


def _tree_command(sub, name: str, help: str):
    """A command acting on one working tree's local cluster (`--root`); returns its actions."""
    command = sub.add_parser(name, help=help)
    command.add_argument("--root", default=".", help="working tree whose .lab/ holds the state")
    return command.add_subparsers(dest="action", required=True, metavar="ACTION")


def add_commands(sub) -> None:
    actions = _tree_command(sub, "cluster", "the local Kubernetes cluster (etcd, apiserver, "
                            "controller-manager, scheduler, kwok nodes and, where containers "
                            "can run, a real node; PIMLAB_NODE=auto|real|kwok)")
    actions.add_parser("up", help="build if needed, start, wait for Ready nodes").set_defaults(func=_up)
    actions.add_parser("down", help="stop every process and remove the state").set_defaults(func=_down)
    actions.add_parser("status", help="which components run").set_defaults(func=_status)
    actions.add_parser("build", help="compile the binaries (control plane, node, add-ons) into the cache").set_defaults(func=_build)
    actions.add_parser("build-kwok", help="compile kwok (the kwok nodes: PIMLAB_NODE=kwok, simulated namespaces) "
                       "into the cache").set_defaults(func=_build_kwok)


def _lab_up(args) -> int:
    lab = LocalLab(args.root)
    try:
        lab.up(samples=not args.no_samples, local_operator=args.local_operator)
    except (ClusterError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if not args.no_samples:
        try:
            lab.wait_ready(args.wait)
        except RuntimeError as error:
            print(lab.state())
            print(f"error: {error}", file=sys.stderr)
            return 1
        if lab.plane.real_node:
            with lab.plane.progress.step("seed", "seeding the shards"):
                seeded = lab.seed()
            print(f"seeded: {seeded}")
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
    LocalLab(args.root).down()
    print("operator, Flux and its Git server (if they ran) and control plane stopped")
    return 0


def add_lab_commands(sub) -> None:
    actions = _tree_command(sub, "lab", "the whole lab on the local control plane")
    up = actions.add_parser("up", help="control plane, CRDs, operator, samples")
    up.add_argument("--no-samples", action="store_true", help="do not apply samples/")
    up.add_argument("--wait", type=int, default=180, help="seconds to wait for the sample Lab")
    up.add_argument("--local-operator", action="store_true",
                    help="run the operator as a local process (development), not as a pod")
    up.set_defaults(func=_lab_up)
    actions.add_parser("down", help="stop the operator, Flux if it runs, and the control plane").set_defaults(func=_lab_down)


def _gitops_up(args) -> int:
    ops = GitOps(args.root)
    try:
        ops.up(project_home())
        if not args.no_wait:
            ops.say("waiting for Flux to apply the sample lab and for the Lab to be Ready (pim-lab)")
            ops.wait_ready("pim-lab", timeout=args.wait)
    except (ClusterError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(ops.status())
    print(f"\nFlux reconciles the lab from {ops.layout.lab / 'gitops/git'}. Deliver a commit:\n"
          "  git commit ... && pimlab gitops sync\n"
          f"  export KUBECONFIG={ops.layout.kubeconfig} PATH={ops.layout.bin}:$PATH\n"
          "  kubectl get gitrepositories,kustomizations -n flux-system\n"
          "Stop everything with `make gitops-down` (or `make lab-down`).")
    return 0


def _gitops_sync(args) -> int:
    ops = GitOps(args.root)
    try:
        commit = ops.publish(project_home(), args.ref)
        ops.reconcile()
    except (ClusterError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"serving {args.ref} ({commit[:12]}); source-controller asked to fetch it now")
    return 0


def _gitops_status(args) -> int:
    print(GitOps(args.root).status())
    return 0


def add_gitops_commands(sub) -> None:
    actions = _tree_command(sub, "gitops", "the lab delivered from Git by Flux on the local cluster")
    up = actions.add_parser("up", help="cluster, Git server, Flux, bootstrap from this tree's HEAD")
    up.add_argument("--no-wait", action="store_true", help="do not wait for the sample Lab")
    up.add_argument("--wait", type=int, default=300, help="seconds to wait for pim-lab")
    up.set_defaults(func=_gitops_up)
    sync = actions.add_parser("sync", help="serve a commit of this tree as main and reconcile now")
    sync.add_argument("ref", nargs="?", default="HEAD")
    sync.set_defaults(func=_gitops_sync)
    actions.add_parser("status", help="processes, GitRepository and Kustomizations").set_defaults(func=_gitops_status)

"""`pimlab kind up|down|check`: the lab on kind, for a machine with Docker and kind.

`make up` calls it; every step is printed before it runs, and a failure names the step. Two
ways to deliver the lab once the cluster and the image are there:
- apply (default): the CRDs, the operator (clusters/base/operator) and samples/ with kubectl;
- `--fork URL`: Flux (`flux install`) reconciling cluster A's Kustomizations from your fork
  (clusters/cluster-a/flux.yaml with its GitRepository's URL set to URL).

The project's own machines have no Docker engine: `check` says so and `make up` runs
`make lab` instead. `--dry-run` prints the plan without running anything. This path has not
been run on the project's machines (see docs/kind.md); what is checked here is the plan,
the kind configs and every manifest it applies (server-side dry run in the tests).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import yaml

from pimlab_operator.render import project_home

CLUSTER_A = "pim-a"
IMAGE = "ghcr.io/pim-sre/lab:0.1.0"  # the name the manifests use: no image override needed
KIND_CONFIG = Path("clusters/kind/cluster-a.yaml")
FLUX_MANIFEST = Path("clusters/cluster-a/flux.yaml")


@dataclass
class Step:
    name: str
    argv: list[str]
    input: str | None = None
    done: Callable[[], bool] | None = None  # true when there is nothing to do

    def shown(self) -> str:
        fed = " (manifests on stdin)" if self.input else ""
        return "$ " + " ".join(self.argv) + fed


def _kind_clusters() -> list[str]:
    proc = subprocess.run(["kind", "get", "clusters"], capture_output=True, text=True)
    return proc.stdout.split() if proc.returncode == 0 else []


def flux_bootstrap(home: Path, fork: str, branch: str) -> str:
    """cluster A's Flux objects with the GitRepository pointed at `fork`."""
    docs = [d for d in yaml.safe_load_all((home / FLUX_MANIFEST).read_text()) if d]
    for doc in docs:
        if doc["kind"] == "GitRepository":
            doc["spec"]["url"], doc["spec"]["ref"] = fork, {"branch": branch}
    return yaml.safe_dump_all(docs, sort_keys=False)


def up_steps(home: Path, fork: str | None = None, branch: str = "main") -> list[Step]:
    kubectl = ["kubectl", "--context", f"kind-{CLUSTER_A}"]
    steps = [
        Step(f"create the kind cluster {CLUSTER_A}",
             ["kind", "create", "cluster", "--config", str(home / KIND_CONFIG)],
             done=lambda: CLUSTER_A in _kind_clusters()),
        Step("build the image from the Dockerfile", ["docker", "build", "-t", IMAGE, str(home)]),
        Step(f"load the image into {CLUSTER_A}", ["kind", "load", "docker-image", IMAGE, "--name", CLUSTER_A]),
    ]
    if fork:
        return steps + [
            Step("install Flux's controllers", ["flux", "install", "--context", f"kind-{CLUSTER_A}"]),
            Step(f"bootstrap cluster A's Kustomizations from {fork} ({branch})",
                 [*kubectl, "apply", "--server-side", "-f", "-"], input=flux_bootstrap(home, fork, branch)),
            Step("wait for Flux to apply the CRDs, the operator and the lab (pim-lab Ready)",
                 [*kubectl, "-n", "flux-system", "wait", "--for=condition=Ready",
                  "kustomization/pim-lab", "--timeout=20m"]),
        ]
    return steps + [
        Step("install the CRDs (crds/, crds/thirdparty/)",
             [*kubectl, "apply", "--server-side", "-f", str(home / "crds"), "-f", str(home / "crds/thirdparty")]),
        Step("wait for the CRDs to be Established",
             [*kubectl, "wait", "--for=condition=Established", "crd", "--all", "--timeout=60s"]),
        Step("install the operator (clusters/base/operator)",
             [*kubectl, "apply", "--server-side", "-k", str(home / "clusters/base/operator")]),
        Step("wait for the operator's rollout",
             [*kubectl, "-n", "pim-system", "rollout", "status", "deployment/pimlab-operator", "--timeout=5m"]),
        Step("apply the sample lab (samples/)", [*kubectl, "apply", "--server-side", "-f", str(home / "samples")]),
        Step("wait for the sample Lab to be Ready",
             [*kubectl, "-n", "lab", "wait", "--for=condition=Ready", "lab/pim", "--timeout=20m"]),
    ]


def down_steps() -> list[Step]:
    return [Step(f"delete the kind cluster {CLUSTER_A}", ["kind", "delete", "cluster", "--name", CLUSTER_A],
                 done=lambda: CLUSTER_A not in _kind_clusters())]


def missing(fork: bool = False) -> str | None:
    """Why this machine cannot run the kind path (None when it can)."""
    tools = ["docker", "kind", "kubectl"] + (["flux"] if fork else [])
    absent = [t for t in tools if shutil.which(t) is None]
    if absent:
        return f"not installed: {', '.join(absent)}"
    proc = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True)
    if proc.returncode != 0:
        return f"no Docker engine answers (`docker info`: {(proc.stderr or proc.stdout).strip()[-200:]})"
    return None


def run(steps: list[Step], out=sys.stdout, dry_run: bool = False) -> int:
    for number, step in enumerate(steps, 1):
        label = f"[{number}/{len(steps)}] {step.name}"
        if not dry_run and step.done is not None and step.done():
            print(f"{label}: already done", file=out, flush=True)
            continue
        print(f"{label}\n  {step.shown()}", file=out, flush=True)
        if dry_run:
            continue
        proc = subprocess.run(step.argv, input=step.input, text=True)
        if proc.returncode != 0:
            print(f"error: step {number}/{len(steps)} '{step.name}' failed (exit {proc.returncode})",
                  file=sys.stderr, flush=True)
            return proc.returncode
    return 0


def _check(args) -> int:
    reason = missing(fork=bool(getattr(args, "fork", None)))
    if reason:
        print(f"the kind path cannot run here: {reason}")
        return 1
    print("Docker and kind are here: `make up` creates kind clusters")
    return 0


def _up(args) -> int:
    if not args.dry_run and _check(args) != 0:
        return 1
    return run(up_steps(project_home(), args.fork, args.branch), dry_run=args.dry_run)


def _down(args) -> int:
    if not args.dry_run and _check(args) != 0:
        return 1
    return run(down_steps(), dry_run=args.dry_run)


def add_commands(sub) -> None:
    kind = sub.add_parser("kind", help="the lab on kind clusters (a machine with Docker and kind)")
    actions = kind.add_subparsers(dest="action", required=True, metavar="ACTION")
    check = actions.add_parser("check", help="whether Docker, kind and kubectl are here")
    check.add_argument("--fork", help="also require the flux CLI")
    check.set_defaults(func=_check)
    up = actions.add_parser("up", help="create cluster A, build and load the image, deliver the lab")
    up.add_argument("--fork", help="Git URL of your fork: Flux reconciles the lab from it")
    up.add_argument("--branch", default="main", help="branch of the fork (default main)")
    up.add_argument("--dry-run", action="store_true", help="print the steps, run nothing")
    up.set_defaults(func=_up)
    down = actions.add_parser("down", help="delete cluster A")
    down.add_argument("--dry-run", action="store_true", help="print the steps, run nothing")
    down.set_defaults(func=_down)

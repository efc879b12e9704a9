"""The processes GitOps runs beside the cluster (the Git server, source-controller and
kustomize-controller) and where their state lives: what `gitops` starts, and what the cluster's
`down` stops along with everything else of this tree."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from pimlab.cluster import flux_build
from pimlab.cluster.layout import Layout
from pimlab.cluster.procs import pid_alive, running as running_components, terminate

REPOSITORY = "pim-sre-lab"
COMPONENTS = ("git-server", "source-controller", "kustomize-controller")


def gitops_dir(layout: Layout) -> Path:
    return layout.lab / "gitops"


def served_repository(layout: Layout) -> Path:
    """The bare repository the Git server serves; push to it to deliver a commit."""
    return gitops_dir(layout) / "git" / f"{REPOSITORY}.git"


def binaries() -> dict[str, Path]:
    return {"git-server": Path(sys.executable), **flux_build.binaries()}


def running(layout: Layout) -> dict[str, int]:
    return running_components(layout, binaries())


def stop(layout: Layout, say=lambda message: None) -> None:
    """Stop the Git server and the Flux controllers of this tree (nothing when none runs) and
    remove their state (the served repository, artifacts, token kubeconfigs)."""
    for name in reversed(COMPONENTS):
        try:
            pid = int(layout.pid(name).read_text())
        except (OSError, ValueError):
            continue
        if pid_alive(pid, binaries()[name]):
            say(f"stopping {name} (pid {pid})")
            terminate(pid, binaries()[name])
        layout.pid(name).unlink(missing_ok=True)
    shutil.rmtree(gitops_dir(layout), ignore_errors=True)

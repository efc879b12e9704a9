"""Container images for the real node, built on this machine without any registry: one recipe
per image beside a small shared builder (builder.py), and the API the node code uses.

    PAUSE_IMAGE, PROJECT_IMAGE, COREDNS_IMAGE, LOCAL_PATH_IMAGE, PROMETHEUS_OPERATOR_IMAGE,
    PROMETHEUS_IMAGE
        fixed local references (`localhost/pimlab/...`); pods name them with
        `imagePullPolicy: Never` or `IfNotPresent`.
    ALL_IMAGES
        every reference above, in the order `ensure` builds them.
    build(ref, log=sys.stderr) -> Built
        builds one image if its inputs changed (or it was never built) and returns its cached
        archive (`Built.archive`, a docker-archive tar under ~/.cache/pimlab/images/), the hash
        of its inputs and whether it was rebuilt now.
    build_step(ref, progress) -> Built
        build() as a step of a pimlab.cluster.progress.Progress: one line, the builders' output
        in the step's log; the Go build the image needs is a step of its own before it.
    ensure(refs, containerd_address, progress=None, namespace="k8s.io") -> dict[ref, str]
        each image as a step: built if needed, then its archive imported into that containerd
        (`ctr -a ADDR -n k8s.io images import`) only when the image is missing there or was
        imported from other inputs (a label on the containerd image records the inputs' hash).
        Returns ref -> "imported" | "present".

The recipes: pause.py (the sandbox), base.py and project.py (the repository's Dockerfile on an
mmdebstrap base), coredns.py and local_path.py (the add-ons), prometheus_operator.py and
prometheus.py (the monitoring stack). `python -m pimlab.cluster.images build|ensure|status` is
the command line (__main__.py).
"""

from __future__ import annotations

import sys
import time
from typing import Callable

from pimlab.cluster import build as go_builds, prometheus_operator_build
from pimlab.cluster.images import coredns, local_path, pause, project, prometheus, prometheus_operator
from pimlab.cluster.images.builder import BuildLock, Built, load_state, podman_cmd, slug, ulimit_args
from pimlab.cluster.progress import Progress, for_tree, run

__all__ = ["ALL_IMAGES", "Built", "build_step", "COREDNS_IMAGE", "COREDNS_VERSION", "INPUTS_LABEL",
           "LOCAL_PATH_IMAGE", "PAUSE_IMAGE", "PAUSE_VERSION", "PROJECT_IMAGE", "PROMETHEUS_IMAGE",
           "PROMETHEUS_OPERATOR_IMAGE", "build", "ensure", "podman_cmd", "status", "ulimit_args"]

PAUSE_VERSION, PAUSE_IMAGE = pause.VERSION, pause.IMAGE
PROJECT_IMAGE = project.IMAGE
COREDNS_VERSION, COREDNS_IMAGE = coredns.VERSION, coredns.IMAGE
LOCAL_PATH_IMAGE = local_path.IMAGE
PROMETHEUS_OPERATOR_IMAGE = prometheus_operator.IMAGE
PROMETHEUS_IMAGE = prometheus.IMAGE

RECIPES = {
    PAUSE_IMAGE: pause.build,
    COREDNS_IMAGE: coredns.build,
    LOCAL_PATH_IMAGE: local_path.build,
    PROJECT_IMAGE: project.build,
    PROMETHEUS_OPERATOR_IMAGE: prometheus_operator.build,
    PROMETHEUS_IMAGE: prometheus.build,
}
ALL_IMAGES = tuple(RECIPES)
# What a cold build of each image takes on the 2-core machine, its Go build aside, until one is
# measured here (progress.py): docs/images.md's figures; the project's includes its mmdebstrap
# base, the pause image downloading the k8s.io/kubernetes module when Go's cache lacks it.
COLD_SECONDS = {PAUSE_IMAGE: 60, COREDNS_IMAGE: 15, LOCAL_PATH_IMAGE: 15, PROJECT_IMAGE: 4 * 60,
                PROMETHEUS_OPERATOR_IMAGE: 15, PROMETHEUS_IMAGE: 15}
# The Go build an image's recipe needs (whether it is built already, the build as a step).
GO_BUILDS: dict[str, tuple[Callable[[], bool], Callable[[Progress], object]]] = {
    COREDNS_IMAGE: (go_builds.addons_built, go_builds.addons_step),
    LOCAL_PATH_IMAGE: (go_builds.addons_built, go_builds.addons_step),
    PROMETHEUS_OPERATOR_IMAGE: (prometheus_operator_build.is_built, prometheus_operator_build.build_step),
    PROMETHEUS_IMAGE: (prometheus_operator_build.prometheus_built, prometheus_operator_build.prometheus_step),
}

# The label on a containerd image that records the inputs it was built from.
INPUTS_LABEL = "lab.pim-sre/inputs"


def build(ref: str, log=sys.stderr) -> Built:
    """Build `ref` if its inputs changed since its cached archive was made; return the archive."""
    try:
        recipe = RECIPES[ref]
    except KeyError:
        raise ValueError(f"unknown image {ref!r}; known: {', '.join(RECIPES)}") from None
    with BuildLock():
        return recipe(log)


def _go_build(ref: str, progress: Progress) -> None:
    """The Go build `ref` needs, as a step of its own when it is missing (so the image's step
    measures the image alone)."""
    done, step = GO_BUILDS.get(ref, (lambda: True, None))
    if not done():
        step(progress)


def build_step(ref: str, progress: Progress) -> Built:
    """build(ref) as a step of `progress`, after the Go build it needs."""
    _go_build(ref, progress)
    with progress.step(f"image-{slug(ref)}", f"image {ref}", COLD_SECONDS[ref]) as step:
        built = build(ref, step.log)
        step.cached = not built.rebuilt
        return built


def _ctr(address: str, namespace: str, args: list[str], log, capture: bool = True) -> str:
    return run(["ctr", "-a", address, "-n", namespace, *args], log, capture=capture)


def _containerd_inputs(address: str, namespace: str, ref: str, log) -> str | None:
    """The inputs label of `ref` in that containerd, '' if unlabelled, None if absent."""
    out = _ctr(address, namespace, ["images", "ls", f"name=={ref}"], log)
    lines = out.strip().splitlines()[1:]
    if not lines:
        return None
    for field in lines[0].split()[-1].split(","):
        key, _, value = field.partition("=")
        if key == INPUTS_LABEL:
            return value
    return ""


def ensure(refs, containerd_address: str, progress: Progress | None = None,
           namespace: str = "k8s.io") -> dict:
    """Build what is needed and import into containerd what is missing or stale there, each
    image a step of `progress` (by default said on stderr, logged in this tree's .lab/logs/)."""
    progress = progress or for_tree(sys.stderr)
    result = {}
    for ref in refs:
        _go_build(ref, progress)
        with progress.step(f"node-image-{slug(ref)}", f"image {ref} in the node's containerd",
                           COLD_SECONDS[ref]) as step:
            built = build(ref, step.log)
            step.cached = not built.rebuilt
            if _containerd_inputs(containerd_address, namespace, ref, step.log) == built.inputs:
                result[ref] = step.note = "present"
                continue
            started = time.monotonic()
            _ctr(containerd_address, namespace, ["images", "import", str(built.archive)], step.log)
            _ctr(containerd_address, namespace,
                 ["images", "label", ref, f"{INPUTS_LABEL}={built.inputs}"], step.log)
            print(f"imported {ref} in {time.monotonic() - started:.1f} s", file=step.log, flush=True)
            result[ref] = "imported"
            step.note = "built and imported" if built.rebuilt else "imported"
    return result


def status() -> list[dict]:
    """What the cache holds: one record per built image (ref, inputs, archive, sizes, times)."""
    return [load_state(ref) or {"ref": ref, "built": False} for ref in ALL_IMAGES]

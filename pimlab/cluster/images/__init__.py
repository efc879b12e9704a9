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
    ensure(refs, containerd_address, log=sys.stderr, namespace="k8s.io") -> dict[ref, str]
        builds what is needed, then imports each archive into that containerd
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

from pimlab.cluster.images import coredns, local_path, pause, project, prometheus, prometheus_operator
from pimlab.cluster.images.builder import BuildLock, Built, load_state, podman_cmd, run, ulimit_args

__all__ = ["ALL_IMAGES", "Built", "COREDNS_IMAGE", "COREDNS_VERSION", "INPUTS_LABEL",
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


def ensure(refs, containerd_address: str, log=sys.stderr, namespace: str = "k8s.io") -> dict:
    """Build what is needed and import into containerd what is missing or stale there."""
    result = {}
    for ref in refs:
        built = build(ref, log)
        if _containerd_inputs(containerd_address, namespace, ref, log) == built.inputs:
            result[ref] = "present"
            continue
        started = time.monotonic()
        _ctr(containerd_address, namespace, ["images", "import", str(built.archive)], log)
        _ctr(containerd_address, namespace,
             ["images", "label", ref, f"{INPUTS_LABEL}={built.inputs}"], log)
        print(f"imported {ref} in {time.monotonic() - started:.1f} s", file=log, flush=True)
        result[ref] = "imported"
    return result


def status() -> list[dict]:
    """What the cache holds: one record per built image (ref, inputs, archive, sizes, times)."""
    return [load_state(ref) or {"ref": ref, "built": False} for ref in ALL_IMAGES]

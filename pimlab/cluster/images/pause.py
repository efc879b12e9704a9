"""The sandbox image: `gcc -static` of build/pause/linux/pause.c from the k8s.io/kubernetes
module (the control plane's version, from the Go module cache), alone in an image."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pimlab.cluster.build import KUBERNETES_VERSION
from pimlab.cluster.images.builder import Built, cached, import_rootfs, save, sha256, single_file_rootfs
from pimlab.cluster.progress import run

VERSION = "3.10.1"  # build/pause/Makefile's TAG in k8s.io/kubernetes v1.34
IMAGE = f"localhost/pimlab/pause:{VERSION}"
CFLAGS = ["-Os", "-Wall", "-Werror", "-static", f"-DVERSION=v{VERSION}-pimlab-{KUBERNETES_VERSION}"]


def _gomodcache() -> Path:
    return Path(subprocess.run(["go", "env", "GOMODCACHE"], capture_output=True, text=True,
                               check=True).stdout.strip())


def source(log=sys.stderr) -> Path:
    """pause.c of the control plane's k8s.io/kubernetes module, downloaded if not cached."""
    src = _gomodcache() / f"k8s.io/kubernetes@{KUBERNETES_VERSION}" / "build/pause/linux/pause.c"
    if not src.is_file():
        with tempfile.TemporaryDirectory() as work:
            run(["go", "mod", "download", "-json", f"k8s.io/kubernetes@{KUBERNETES_VERSION}"],
                log, cwd=Path(work), capture=True)
    if not src.is_file():
        raise RuntimeError(f"{src} is missing after go mod download")
    return src


def build(log) -> Built:
    src = source(log)
    inputs = sha256("pause/1", src.read_bytes(), " ".join(CFLAGS))
    if found := cached(IMAGE, inputs):
        return found
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as work:
        binary = Path(work) / "pause"
        run(["gcc", *CFLAGS, "-o", str(binary), str(src)], log)
        run(["strip", str(binary)], log)
        import_rootfs(single_file_rootfs(binary, "pause"), IMAGE,
                      ['ENTRYPOINT ["/pause"]', "USER 65535:65535"], log)
    return save(IMAGE, inputs, started, log, {"source": str(src)})

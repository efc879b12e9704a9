"""prometheus-operator's image as upstream lays it out: its two static binaries
(pimlab.cluster.prometheus_operator_build) at /bin/operator and /bin/prometheus-config-reloader.
One image serves the operator's Deployment and the config-reloader containers it adds to the
Prometheus pods."""

from __future__ import annotations

import io
import tarfile
import tempfile
import time
from pathlib import Path

from pimlab.cluster import prometheus_operator_build
from pimlab.cluster.images.builder import Built, cached, images_dir, import_rootfs, save, sha256

IMAGE = f"localhost/pimlab/prometheus-operator:{prometheus_operator_build.VERSION}"


def image_rootfs(dest: Path, binaries: dict[str, Path]) -> Path:
    """A root filesystem tar with the two binaries where prometheus-operator expects them."""
    names = {"prometheus-operator": "bin/operator", "prometheus-config-reloader": "bin/prometheus-config-reloader"}
    with tarfile.open(dest, "w") as tar:
        for directory in ("bin", "tmp"):
            info = tarfile.TarInfo(directory)
            info.type, info.mode = tarfile.DIRTYPE, 0o1777 if directory == "tmp" else 0o755
            tar.addfile(info)
        for key, inside in names.items():
            data = binaries[key].read_bytes()
            info = tarfile.TarInfo(inside)
            info.size, info.mode = len(data), 0o755
            tar.addfile(info, io.BytesIO(data))
    return dest


def build(log) -> Built:
    binaries = prometheus_operator_build.build(log)
    inputs = sha256("prometheus-operator/1", IMAGE,
                    *(binaries[name].read_bytes() for name in sorted(binaries)))
    if found := cached(IMAGE, inputs):
        return found
    started = time.monotonic()
    with tempfile.TemporaryDirectory(dir=images_dir()) as work:
        rootfs = image_rootfs(Path(work) / "rootfs.tar", binaries)
        import_rootfs(rootfs.read_bytes(), IMAGE, ['ENTRYPOINT ["/bin/operator"]', "USER 65534:65534"], log)
    return save(IMAGE, inputs, started, log)

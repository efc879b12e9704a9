"""The lab's in-cluster monitoring, for the cluster code to apply: the monitoring CRDs
(`crds/thirdparty/`), prometheus-operator and one Prometheus object, and the image contents the
operator runs from (both binaries are static, so an image is just them in /bin).

    build()                      -> {"prometheus-operator": path, "prometheus-config-reloader": path}
    image_rootfs(dest)           -> a tar with /bin/operator and /bin/prometheus-config-reloader
                                    (podman import -> podman save -> ctr images import)
    crd_files()                  -> the monitoring.coreos.com CRD files, for server-side apply
    manifests(...)               -> ServiceAccounts, RBAC, Deployment, Services and the Prometheus
    prometheus_url(namespace)    -> what to put in Lab.spec.observability.prometheusUrl
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

from pimlab.cluster import prometheus_operator_build

OPERATOR_IMAGE = f"localhost/pimlab/prometheus-operator:{prometheus_operator_build.VERSION}"
PROMETHEUS_IMAGE = "localhost/pimlab/lab:0.1.0"
#: Debian bookworm's prometheus in the project's image; prometheus-operator picks flags by it.
PROMETHEUS_VERSION = "v2.42.0"
LABELS = {"app.kubernetes.io/part-of": "pim-sre-lab", "app.kubernetes.io/component": "monitoring"}


def build(log=None) -> dict[str, Path]:
    return prometheus_operator_build.build(*(() if log is None else (log,)))


def crd_files() -> list[Path]:
    root = Path(__file__).resolve().parents[2] / "crds" / "thirdparty"
    return sorted(root.glob("monitoring.coreos.com_*.yaml"))


def image_rootfs(dest: Path, binaries: dict[str, Path] | None = None) -> Path:
    """A root filesystem tar for the operator's image: the two static binaries where
    prometheus-operator expects them (`/bin/operator`, `/bin/prometheus-config-reloader`)."""
    binaries = binaries or build()
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


def manifests(namespace: str = "monitoring", operator_image: str = OPERATOR_IMAGE,
              prometheus_image: str = PROMETHEUS_IMAGE, prometheus_name: str = "lab") -> list[dict]:
    from pimlab_operator.render import render

    return render("monitoring/stack.yaml.j2", namespace=namespace, labels=LABELS, operator_image=operator_image,
                  prometheus_image=prometheus_image, prometheus_version=PROMETHEUS_VERSION,
                  prometheus_name=prometheus_name)


def prometheus_url(namespace: str = "monitoring") -> str:
    return f"http://prometheus.{namespace}:9090"

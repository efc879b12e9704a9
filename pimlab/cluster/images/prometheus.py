"""Prometheus: upstream's static binary from its Go module (pimlab.cluster.prometheus_operator_build),
laid out as upstream's image has it: /bin/prometheus, data in /prometheus. Debian's prometheus
lacks Kubernetes service discovery, so it cannot load what prometheus-operator writes."""

from __future__ import annotations

from pimlab.cluster import prometheus_operator_build
from pimlab.cluster.images.builder import Built, sha256, single_binary_image

IMAGE = f"localhost/pimlab/prometheus:{prometheus_operator_build.PROMETHEUS_VERSION}"
CHANGES = ['ENTRYPOINT ["/bin/prometheus"]', "WORKDIR /prometheus", "USER 65534:65534"]


def build(log) -> Built:
    binary = prometheus_operator_build.build_prometheus(log)
    inputs = sha256("prometheus/1", IMAGE, "\0".join(CHANGES), binary.read_bytes())
    return single_binary_image(IMAGE, inputs, binary, "bin/prometheus",
                               ("bin", "tmp", "etc", "etc/prometheus", "prometheus"), CHANGES, log)

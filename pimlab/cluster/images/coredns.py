"""CoreDNS, the cluster DNS of the real node: its static binary from the Go module proxy
(CGO off, pimlab.cluster.build's add-ons) alone in an image."""

from __future__ import annotations

from pimlab.cluster.images.builder import Built, addon_image

VERSION = "v1.12.1"
IMAGE = f"localhost/pimlab/coredns:{VERSION}"


def build(log) -> Built:
    return addon_image(IMAGE, "coredns", "coredns", ['ENTRYPOINT ["/coredns"]'], log)

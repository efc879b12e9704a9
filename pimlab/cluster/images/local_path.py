"""local-path-provisioner, the default StorageClass of the real node: its static binary from
the Go module proxy (CGO off, pimlab.cluster.build's add-ons) alone in an image."""

from __future__ import annotations

from pimlab.cluster.images.builder import Built, addon_image

VERSION = "v0.0.30"
IMAGE = f"localhost/pimlab/local-path-provisioner:{VERSION}"


def build(log) -> Built:
    return addon_image(IMAGE, "local-path-provisioner", "usr/bin/local-path-provisioner",
                       ['ENTRYPOINT ["/usr/bin/local-path-provisioner"]'], log)

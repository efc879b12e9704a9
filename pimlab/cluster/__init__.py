"""The local cluster: control plane and real node built and run on this machine (build, PKI, images, node)."""

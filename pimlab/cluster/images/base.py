"""The project image's base: `mmdebstrap` of Debian from the machine's own apt sources (python3
is 3.11, as python:3.11-slim's) with the Debian packages the project's Dockerfile installs,
`podman import`ed and tagged with the hash of its recipe."""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
from pathlib import Path

from pimlab.cluster.images.builder import images_dir, image_id, podman, podman_cmd, sha256
from pimlab.cluster.progress import run

IMAGE_NAME = "localhost/pimlab/base"  # tagged bookworm-<hash of its recipe>
SUITE = "bookworm"  # Debian 12: python3 is 3.11, as python:3.11-slim's
# What the Dockerfile's FROM gives docker users and Debian's python3 lacks: venv, useradd.
PACKAGES = ("python3", "python3-venv", "passwd")
# Left out of the base (dpkg path-exclude): documentation, and what only weighs: moment-timezone's
# test data (218 MB, pulled in by prometheus' web UI) and PostgreSQL's LLVM JIT (libLLVM, z3,
# bitcode: 150 MB; without llvmjit.so PostgreSQL simply does not JIT).
DPKG_EXCLUDES = ("/usr/share/doc/*", "/usr/share/man/*", "/usr/share/info/*",
                 "/usr/share/locale/*", "/usr/share/lintian/*",
                 "/usr/share/javascript/moment-timezone/data/*",
                 "/usr/lib/postgresql/*/lib/llvmjit*", "/usr/lib/postgresql/*/lib/bitcode/*",
                 "/usr/lib/*/libLLVM-*", "/usr/lib/*/libz3.so*")


def dockerfile_debian_packages(dockerfile: Path) -> list[str]:
    """The default of the Dockerfile's `ARG DEBIAN_PACKAGES="..."`: the base gets them too, so
    the Dockerfile's apt step finds nothing missing and needs no Debian mirror in the build."""
    for line in dockerfile.read_text().splitlines():
        if line.startswith("ARG DEBIAN_PACKAGES="):
            return line.split("=", 1)[1].strip().strip('"').split()
    raise RuntimeError(f"{dockerfile} has no ARG DEBIAN_PACKAGES=\"...\" line")


def apt_sources() -> bytes:
    """The machine's apt sources, which mmdebstrap uses when given no mirror: part of the
    base's inputs (their text is hashed, never copied anywhere)."""
    parts = []
    for path in [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]:
        if path.is_file():
            parts.append(path.read_bytes())
    return b"\n".join(parts)


def recipe(dockerfile: Path) -> list[str]:
    packages = sorted({*PACKAGES, *dockerfile_debian_packages(dockerfile)})
    cmd = ["mmdebstrap", "--variant=apt", "--include=" + ",".join(packages),
           "--aptopt=Acquire::Languages \"none\"",
           "--customize-hook=rm -rf \"$1\"/var/lib/apt/lists/* \"$1\"/var/cache/apt/*.bin"]
    cmd += [f"--dpkgopt=path-exclude={p}" for p in DPKG_EXCLUDES]
    cmd += ["--dpkgopt=path-include=/usr/share/doc/*/copyright", SUITE]
    return cmd


def build(dockerfile: Path, log) -> tuple[str, bool]:
    """The base image (mmdebstrap of Debian from the machine's apt sources), tagged with the
    hash of its recipe; built only when podman does not have that tag. Returns (ref, rebuilt)."""
    steps = recipe(dockerfile)
    inputs = sha256("base/1", "\0".join(steps), apt_sources())
    ref = f"{IMAGE_NAME}:{SUITE}-{inputs[:12]}"
    if image_id(ref):
        return ref, False
    started = time.monotonic()
    with tempfile.TemporaryDirectory(dir=images_dir()) as work:
        rootfs = Path(work) / "rootfs.tar"
        run([*steps, str(rootfs)], log)
        args = ["import", "--change", "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "--change", "ENV LANG=C.UTF-8", "--change", 'CMD ["/bin/bash"]', str(rootfs), ref]
        podman(args, log, capture=True)
    seconds = round(time.monotonic() - started, 1)
    tags = podman(["images", "--format", "{{.Repository}}:{{.Tag}}", IMAGE_NAME], log,
                  capture=True).split()
    for old in set(tags) - {ref}:  # an older recipe's base (kept while an image still uses it)
        subprocess.run([*podman_cmd(), "rmi", old], capture_output=True)
    (images_dir() / "base.json").write_text(json.dumps(
        {"ref": ref, "inputs": inputs, "build_seconds": seconds, "recipe": steps}, indent=2) + "\n")
    print(f"built {ref} in {seconds} s", file=log, flush=True)
    return ref, True

"""What every image recipe shares: the cache of built images, podman on its private storage,
the inputs hash that decides a rebuild, and the step that turns a root filesystem into an image.

Each image is one docker-archive under ~/.cache/pimlab/images/ beside a JSON file holding the
sha256 of its inputs (the recipe and the files it reads) and the podman image id; it is rebuilt
only when that hash changes. Podman runs on a private storage under the cache directory, with
host networking for builds (no podman bridge, no iptables rules of its own), so it never
touches the node's network.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
import resource
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from pimlab.cluster.build import addon_binary, build_addons
from pimlab.cluster.layout import cache_root
from pimlab.cluster.progress import run

ROOT = Path(__file__).resolve().parents[3]


def images_dir() -> Path:
    return cache_root() / "images"


@dataclass
class Built:
    ref: str
    archive: Path
    inputs: str  # sha256 of the inputs
    image_id: str
    rebuilt: bool
    seconds: float


def podman_cmd() -> list[str]:
    """podman on the project's private storage, never the machine's default one."""
    store = images_dir() / "podman"
    # runroot: on tmpfs, one per storage (two storages must never share one)
    key = hashlib.sha256(str(store).encode()).hexdigest()[:8]
    run_root = Path(f"/run/pimlab-podman-{key}") if os.access("/run", os.W_OK) else store / "run"
    return ["podman", "--root", str(store / "storage"), "--runroot", str(run_root),
            "--tmpdir", str(store / "tmp"), "--cgroup-manager", "cgroupfs",
            "--events-backend", "file"]


def ulimit_args() -> list[str]:
    """podman asks runc for rlimits a root process here may not raise to (no CAP_SYS_RESOURCE:
    its defaults for root fail with "error setting rlimit type 7/6"); ask for what we have."""
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    # nproc: a limit of this machine's own above 32768 was refused as well.
    nproc = min(resource.getrlimit(resource.RLIMIT_NPROC)[1], 32768)
    return [f"--ulimit=nofile={nofile}:{nofile}", f"--ulimit=nproc={nproc}:{nproc}"]


def podman(args: list[str], log, capture: bool = False) -> str:
    (images_dir() / "podman" / "tmp").mkdir(parents=True, exist_ok=True)
    return run([*podman_cmd(), *args], log, capture=capture, what=f"podman {args[0]}")


def image_id(ref: str) -> str | None:
    proc = subprocess.run([*podman_cmd(), "image", "inspect", "--format", "{{.Id}}", ref],
                          capture_output=True, text=True)
    return proc.stdout.strip() if proc.returncode == 0 else None


def sha256(*parts: bytes | str) -> str:
    """The inputs hash: each part length-prefixed, so no two lists of parts collide."""
    h = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        h.update(len(data).to_bytes(8, "big"))
        h.update(data)
    return h.hexdigest()


def slug(ref: str) -> str:
    return ref.removeprefix("localhost/").replace("/", "_").replace(":", "_")


def state_path(ref: str) -> Path:
    return images_dir() / f"{slug(ref)}.json"


def archive_path(ref: str) -> Path:
    return images_dir() / f"{slug(ref)}.tar"


def load_state(ref: str) -> dict | None:
    try:
        return json.loads(state_path(ref).read_text())
    except (OSError, ValueError):
        return None


def cached(ref: str, inputs: str) -> Built | None:
    """The cached build of `ref` when it was made from these inputs (None: build it)."""
    state = load_state(ref)
    archive = archive_path(ref)
    if state and state.get("inputs") == inputs and archive.is_file():
        if not image_id(ref):  # the podman storage was reset: the archive still holds it
            podman(["load", "-i", str(archive)], sys.stderr, capture=True)
        return Built(ref, archive, inputs, state.get("image_id", ""), False, 0.0)
    return None


def save(ref: str, inputs: str, started: float, log, extra: dict | None = None) -> Built:
    """podman save the freshly built ref into its archive and record its inputs."""
    archive = archive_path(ref)
    tmp = archive.with_suffix(".tar.tmp")
    tmp.unlink(missing_ok=True)
    saving = time.monotonic()
    podman(["save", "--format", "docker-archive", "-o", str(tmp), ref], log)
    tmp.replace(archive)
    extra = {**(extra or {}), "save_seconds": round(time.monotonic() - saving, 1)}
    built_id = image_id(ref) or ""
    seconds = round(time.monotonic() - started, 1)
    state = {"ref": ref, "inputs": inputs, "image_id": built_id, "archive": str(archive),
             "archive_bytes": archive.stat().st_size, "build_seconds": seconds,
             "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **extra}
    state_path(ref).write_text(json.dumps(state, indent=2) + "\n")
    print(f"built {ref} in {seconds} s ({state['archive_bytes'] // 1024} KiB)", file=log, flush=True)
    return Built(ref, archive, inputs, built_id, True, seconds)


class BuildLock:
    """One image build at a time on this machine (per cache directory)."""

    def __enter__(self):
        images_dir().mkdir(parents=True, exist_ok=True)
        self._f = open(images_dir() / "build.lock", "w")
        fcntl.flock(self._f, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        self._f.close()


def single_file_rootfs(binary: Path, name: str, extra_dirs: tuple[str, ...] = ()) -> bytes:
    """A rootfs tar holding one static executable at /<name> (plus empty directories)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for d in extra_dirs:
            info = tarfile.TarInfo(d)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, (0o1777 if d == "tmp" else 0o755), 0
            tar.addfile(info)
        data = binary.read_bytes()
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime = len(data), 0o755, 0
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def import_rootfs(rootfs: bytes, ref: str, changes: list[str], log) -> None:
    """`podman import` a root filesystem tar as `ref`, with image config `changes`."""
    with tempfile.NamedTemporaryFile(suffix=".tar", dir=images_dir()) as f:
        f.write(rootfs)
        f.flush()
        args = ["import"]
        for change in changes:
            args += ["--change", change]
        podman([*args, f.name, ref], log, capture=True)


def single_binary_image(ref: str, inputs: str, binary: Path, path: str, dirs: tuple[str, ...],
                        changes: list[str], log) -> Built:
    """A static binary alone in an image at /<path> (no shell, no libc, as upstream's images
    FROM scratch/distroless), unless the cache holds one from the same inputs."""
    if found := cached(ref, inputs):
        return found
    started = time.monotonic()
    import_rootfs(single_file_rootfs(binary, path, dirs), ref, changes, log)
    return save(ref, inputs, started, log, {"binary": str(binary)})


def addon_image(ref: str, addon: str, path: str, changes: list[str], log) -> Built:
    """A cluster add-on's static Go binary (`addon`, built from the module proxy by
    pimlab.cluster.build) alone in an image at /<path>."""
    build_addons(log)
    binary = addon_binary(addon)
    inputs = sha256("addon/1", ref, path, "\0".join(changes), binary.read_bytes())
    parents = path.split("/")[:-1]
    dirs = tuple("/".join(parents[: i + 1]) for i in range(len(parents))) + ("tmp", "etc")
    return single_binary_image(ref, inputs, binary, path, dirs,
                               ["ENV PATH=/usr/local/bin:/usr/bin:/bin", *changes], log)

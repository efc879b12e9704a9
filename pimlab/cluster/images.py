"""Container images for the real node, built on this machine without any registry.

API (what the node code uses):

    PAUSE_IMAGE, PROJECT_IMAGE, COREDNS_IMAGE, LOCAL_PATH_IMAGE, BASE_IMAGE_NAME
        fixed local references (`localhost/pimlab/...`); pods name them with
        `imagePullPolicy: Never` or `IfNotPresent`.
    ALL_IMAGES
        every reference above except the base, in the order `ensure` builds them.
    build(ref, log=sys.stderr) -> Built
        builds one image if its inputs changed (or it was never built) and returns its cached
        archive (`Built.archive`, a docker-archive tar under ~/.cache/pimlab/images/), the hash
        of its inputs and whether it was rebuilt now.
    ensure(refs, containerd_address, log=sys.stderr, namespace="k8s.io") -> dict[ref, str]
        builds what is needed, then imports each archive into that containerd
        (`ctr -a ADDR -n k8s.io images import`) only when the image is missing there or was
        imported from other inputs (a label on the containerd image records the inputs' hash).
        Returns ref -> "imported" | "present".

How each image is made:
  * pause: `gcc -static` of build/pause/linux/pause.c from the k8s.io/kubernetes module (the
    control plane's version, from the Go module cache), one file in a rootfs tar, `podman import`.
  * base: `mmdebstrap` of Debian bookworm from the machine's own apt sources (python3 is 3.11),
    with the Debian packages the project's Dockerfile installs, `podman import`.
  * project: the repository's one Dockerfile, `podman build --from=<base>` (the Dockerfile's
    first FROM is replaced), pip reaching PyPI through the host's own pip configuration, handed
    in at build time as build secrets.
  * coredns, local-path-provisioner: static Go binaries from the Go module proxy (CGO off), each
    alone in a rootfs tar, `podman import`.

Every image is rebuilt only when the sha256 of its inputs changes (the recipe, the files it
reads); the hash and the podman image id are kept beside the archive in a JSON file. Podman runs
on a private storage under the cache directory, with host networking for builds (no podman
bridge, no iptables rules of its own), so it never touches the node's network.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
import resource
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

try:
    from pimlab.cluster.build import KUBERNETES_VERSION, cache_root
except ImportError:  # before the local-cluster code moved into this package
    from pimlab.controlplane_build import KUBERNETES_VERSION, cache_root  # type: ignore

ROOT = Path(__file__).resolve().parents[2]

PAUSE_VERSION = "3.10.1"  # build/pause/Makefile's TAG in k8s.io/kubernetes v1.34
COREDNS_VERSION = "v1.12.1"
LOCAL_PATH_VERSION = "v0.0.30"
PROJECT_VERSION = "0.1.0"  # pyproject.toml's version

PAUSE_IMAGE = f"localhost/pimlab/pause:{PAUSE_VERSION}"
PROJECT_IMAGE = f"localhost/pimlab/lab:{PROJECT_VERSION}"
COREDNS_IMAGE = f"localhost/pimlab/coredns:{COREDNS_VERSION}"
LOCAL_PATH_IMAGE = f"localhost/pimlab/local-path-provisioner:{LOCAL_PATH_VERSION}"
BASE_IMAGE_NAME = "localhost/pimlab/base"  # tagged bookworm-<hash of its recipe>

ALL_IMAGES = (PAUSE_IMAGE, COREDNS_IMAGE, LOCAL_PATH_IMAGE, PROJECT_IMAGE)

# The label on a containerd image that records the inputs it was built from.
INPUTS_LABEL = "lab.pim-sre/inputs"


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


# --------------------------------------------------------------------------- helpers


def _run(cmd: list[str], log, *, cwd: Path | None = None, env: dict | None = None,
         capture: bool = False) -> str:
    print("$ " + " ".join(cmd), file=log, flush=True)
    proc = subprocess.run(
        cmd, cwd=cwd, env=env, text=True,
        stdout=subprocess.PIPE if capture else log,
        stderr=subprocess.PIPE if capture else subprocess.STDOUT,
    )
    if proc.returncode != 0:
        detail = (proc.stderr or "")[-2000:] if capture else f"see {getattr(log, 'name', 'the log')}"
        raise RuntimeError(f"{cmd[0]} {cmd[1] if len(cmd) > 1 else ''} failed "
                           f"(exit {proc.returncode}): {detail}")
    return proc.stdout if capture else ""


def podman_cmd() -> list[str]:
    """podman on the project's private storage, never the machine's default one."""
    store = images_dir() / "podman"
    run = Path("/run/pimlab-podman") if os.access("/run", os.W_OK) else store / "run"
    return ["podman", "--root", str(store / "storage"), "--runroot", str(run),
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
    return _run([*podman_cmd(), *args], log, capture=capture)


def _image_id(ref: str) -> str | None:
    proc = subprocess.run([*podman_cmd(), "image", "inspect", "--format", "{{.Id}}", ref],
                          capture_output=True, text=True)
    return proc.stdout.strip() if proc.returncode == 0 else None


def _sha256(*parts: bytes | str) -> str:
    h = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        h.update(len(data).to_bytes(8, "big"))
        h.update(data)
    return h.hexdigest()


def _slug(ref: str) -> str:
    return ref.removeprefix("localhost/").replace("/", "_").replace(":", "_")


def _state_path(ref: str) -> Path:
    return images_dir() / f"{_slug(ref)}.json"


def _archive_path(ref: str) -> Path:
    return images_dir() / f"{_slug(ref)}.tar"


def _load_state(ref: str) -> dict | None:
    try:
        return json.loads(_state_path(ref).read_text())
    except (OSError, ValueError):
        return None


def _cached(ref: str, inputs: str) -> Built | None:
    state = _load_state(ref)
    archive = _archive_path(ref)
    if state and state.get("inputs") == inputs and archive.is_file():
        return Built(ref, archive, inputs, state.get("image_id", ""), False, 0.0)
    return None


def _save(ref: str, inputs: str, started: float, log, extra: dict | None = None) -> Built:
    """podman save the freshly built ref into its archive and record its inputs."""
    archive = _archive_path(ref)
    tmp = archive.with_suffix(".tar.tmp")
    tmp.unlink(missing_ok=True)
    podman(["save", "--format", "docker-archive", "-o", str(tmp), ref], log)
    tmp.replace(archive)
    image_id = _image_id(ref) or ""
    seconds = round(time.monotonic() - started, 1)
    state = {"ref": ref, "inputs": inputs, "image_id": image_id, "archive": str(archive),
             "archive_bytes": archive.stat().st_size, "build_seconds": seconds,
             "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **(extra or {})}
    _state_path(ref).write_text(json.dumps(state, indent=2) + "\n")
    print(f"built {ref} in {seconds} s ({state['archive_bytes'] // 1024} KiB)", file=log, flush=True)
    return Built(ref, archive, inputs, image_id, True, seconds)


class _Lock:
    """One image build at a time on this machine (per cache directory)."""

    def __enter__(self):
        images_dir().mkdir(parents=True, exist_ok=True)
        self._f = open(images_dir() / "build.lock", "w")
        fcntl.flock(self._f, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        self._f.close()


def _single_file_rootfs(binary: Path, name: str, extra_dirs: tuple[str, ...] = ()) -> bytes:
    """A rootfs tar holding one static executable at /<name> (plus empty directories)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for d in extra_dirs:
            info = tarfile.TarInfo(d)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 0
            tar.addfile(info)
        data = binary.read_bytes()
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime = len(data), 0o755, 0
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _import_rootfs(rootfs: bytes, ref: str, changes: list[str], log) -> None:
    with tempfile.NamedTemporaryFile(suffix=".tar", dir=images_dir()) as f:
        f.write(rootfs)
        f.flush()
        args = ["import"]
        for change in changes:
            args += ["--change", change]
        podman([*args, f.name, ref], log, capture=True)


# --------------------------------------------------------------------------- pause


def _gomodcache() -> Path:
    return Path(subprocess.run(["go", "env", "GOMODCACHE"], capture_output=True, text=True,
                               check=True).stdout.strip())


def pause_source(log=sys.stderr) -> Path:
    """pause.c of the control plane's k8s.io/kubernetes module, downloaded if not cached."""
    src = _gomodcache() / f"k8s.io/kubernetes@{KUBERNETES_VERSION}" / "build/pause/linux/pause.c"
    if not src.is_file():
        with tempfile.TemporaryDirectory() as work:
            _run(["go", "mod", "download", "-json", f"k8s.io/kubernetes@{KUBERNETES_VERSION}"],
                 log, cwd=Path(work), capture=True)
    if not src.is_file():
        raise RuntimeError(f"{src} is missing after go mod download")
    return src


_PAUSE_CFLAGS = ["-Os", "-Wall", "-Werror", "-static",
                 f"-DVERSION=v{PAUSE_VERSION}-pimlab-{KUBERNETES_VERSION}"]


def _build_pause(log) -> Built:
    src = pause_source(log)
    inputs = _sha256("pause/1", src.read_bytes(), " ".join(_PAUSE_CFLAGS))
    if cached := _cached(PAUSE_IMAGE, inputs):
        return cached
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as work:
        binary = Path(work) / "pause"
        _run(["gcc", *_PAUSE_CFLAGS, "-o", str(binary), str(src)], log)
        _run(["strip", str(binary)], log)
        _import_rootfs(_single_file_rootfs(binary, "pause"), PAUSE_IMAGE,
                       ['ENTRYPOINT ["/pause"]', "USER 65535:65535"], log)
    return _save(PAUSE_IMAGE, inputs, started, log, {"source": str(src)})


# --------------------------------------------------------------------------- API

_BUILDERS = {
    PAUSE_IMAGE: _build_pause,
}


def build(ref: str, log=sys.stderr) -> Built:
    """Build `ref` if its inputs changed since its cached archive was made; return the archive."""
    try:
        builder = _BUILDERS[ref]
    except KeyError:
        raise ValueError(f"unknown image {ref!r}; known: {', '.join(_BUILDERS)}") from None
    with _Lock():
        return builder(log)


def _ctr(address: str, namespace: str, args: list[str], log, capture: bool = True) -> str:
    return _run(["ctr", "-a", address, "-n", namespace, *args], log, capture=capture)


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

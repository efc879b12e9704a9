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
  * prometheus-operator: its two static binaries (pimlab.cluster.prometheus_operator_build) in
    /bin, as upstream's image has them, `podman import`.
  * prometheus: upstream's static binary from the same module, /bin/prometheus, workdir
    /prometheus, as upstream's image (Debian's prometheus lacks Kubernetes service discovery).

Every image is rebuilt only when the sha256 of its inputs changes (the recipe, the files it
reads); the hash and the podman image id are kept beside the archive in a JSON file. Podman runs
on a private storage under the cache directory, with host networking for builds (no podman
bridge, no iptables rules of its own), so it never touches the node's network.
"""

from __future__ import annotations

import fcntl
import fnmatch
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
import tomllib
from dataclasses import dataclass
from pathlib import Path

try:
    from pimlab.cluster.build import KUBERNETES_VERSION, cache_root
except ImportError:  # before the local-cluster code moved into this package
    from pimlab.controlplane_build import KUBERNETES_VERSION, cache_root  # type: ignore

from pimlab.cluster import prometheus_operator_build

ROOT = Path(__file__).resolve().parents[2]

PAUSE_VERSION = "3.10.1"  # build/pause/Makefile's TAG in k8s.io/kubernetes v1.34
COREDNS_VERSION = "v1.12.1"
LOCAL_PATH_VERSION = "v0.0.30"
def _project_version() -> str:
    try:
        return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    except (OSError, KeyError, ValueError):
        return "0.1.0"


PROJECT_VERSION = _project_version()  # pyproject.toml's

PAUSE_IMAGE = f"localhost/pimlab/pause:{PAUSE_VERSION}"
PROJECT_IMAGE = f"localhost/pimlab/lab:{PROJECT_VERSION}"
COREDNS_IMAGE = f"localhost/pimlab/coredns:{COREDNS_VERSION}"
LOCAL_PATH_IMAGE = f"localhost/pimlab/local-path-provisioner:{LOCAL_PATH_VERSION}"
BASE_IMAGE_NAME = "localhost/pimlab/base"  # tagged bookworm-<hash of its recipe>
# prometheus-operator and its config reloader (pimlab.cluster.prometheus_operator_build)
PROMETHEUS_OPERATOR_IMAGE = f"localhost/pimlab/prometheus-operator:{prometheus_operator_build.VERSION}"
# Prometheus from the Go module proxy (Debian's has no Kubernetes service discovery)
PROMETHEUS_IMAGE = f"localhost/pimlab/prometheus:{prometheus_operator_build.PROMETHEUS_VERSION}"

ALL_IMAGES = (PAUSE_IMAGE, COREDNS_IMAGE, LOCAL_PATH_IMAGE, PROJECT_IMAGE, PROMETHEUS_OPERATOR_IMAGE,
              PROMETHEUS_IMAGE)

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
         capture: bool = False, what: str | None = None) -> str:
    log = log or sys.stderr  # callers without a log of their own: the terminal
    print("$ " + " ".join(cmd), file=log, flush=True)
    try:
        log.fileno()
        to_log = True
    except (AttributeError, OSError, ValueError):  # e.g. io.StringIO: copy the output in
        to_log = False
    proc = subprocess.run(
        cmd, cwd=cwd, env=env, text=True,
        stdout=log if to_log and not capture else subprocess.PIPE,
        stderr=subprocess.PIPE if capture else subprocess.STDOUT,
    )
    if not capture and not to_log:
        log.write(proc.stdout)
    if proc.returncode != 0:
        detail = ((proc.stderr if capture else proc.stdout) or "")[-2000:] if capture or not to_log \
            else f"see {getattr(log, 'name', 'the log')}"
        raise RuntimeError(f"{what or ' '.join(cmd[:2])} failed "
                           f"(exit {proc.returncode}): {detail}")
    return proc.stdout if capture else ""


def podman_cmd() -> list[str]:
    """podman on the project's private storage, never the machine's default one."""
    store = images_dir() / "podman"
    # runroot: on tmpfs, one per storage (two storages must never share one)
    key = hashlib.sha256(str(store).encode()).hexdigest()[:8]
    run = Path(f"/run/pimlab-podman-{key}") if os.access("/run", os.W_OK) else store / "run"
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
    return _run([*podman_cmd(), *args], log, capture=capture, what=f"podman {args[0]}")


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
        if not _image_id(ref):  # the podman storage was reset: the archive still holds it
            podman(["load", "-i", str(archive)], sys.stderr, capture=True)
        return Built(ref, archive, inputs, state.get("image_id", ""), False, 0.0)
    return None


def _save(ref: str, inputs: str, started: float, log, extra: dict | None = None) -> Built:
    """podman save the freshly built ref into its archive and record its inputs."""
    archive = _archive_path(ref)
    tmp = archive.with_suffix(".tar.tmp")
    tmp.unlink(missing_ok=True)
    saving = time.monotonic()
    podman(["save", "--format", "docker-archive", "-o", str(tmp), ref], log)
    tmp.replace(archive)
    extra = {**(extra or {}), "save_seconds": round(time.monotonic() - saving, 1)}
    image_id = _image_id(ref) or ""
    seconds = round(time.monotonic() - started, 1)
    state = {"ref": ref, "inputs": inputs, "image_id": image_id, "archive": str(archive),
             "archive_bytes": archive.stat().st_size, "build_seconds": seconds,
             "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **extra}
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
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, (0o1777 if d == "tmp" else 0o755), 0
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


# --------------------------------------------------------------------------- base

BASE_SUITE = "bookworm"  # Debian 12: python3 is 3.11, as python:3.11-slim's
# What the Dockerfile's FROM gives docker users and Debian's python3 lacks: venv, useradd.
BASE_PACKAGES = ("python3", "python3-venv", "passwd")
# Left out of the base (dpkg path-exclude): documentation, and what only weighs: moment-timezone's
# test data (218 MB, pulled in by prometheus' web UI) and PostgreSQL's LLVM JIT (libLLVM, z3,
# bitcode: 150 MB; without llvmjit.so PostgreSQL simply does not JIT).
_BASE_DPKG_EXCLUDES = ("/usr/share/doc/*", "/usr/share/man/*", "/usr/share/info/*",
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


def _apt_sources() -> bytes:
    """The machine's apt sources, which mmdebstrap uses when given no mirror: part of the
    base's inputs (their text is hashed, never copied anywhere)."""
    parts = []
    for path in [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]:
        if path.is_file():
            parts.append(path.read_bytes())
    return b"\n".join(parts)


def base_recipe(dockerfile: Path) -> list[str]:
    packages = sorted({*BASE_PACKAGES, *dockerfile_debian_packages(dockerfile)})
    cmd = ["mmdebstrap", "--variant=apt", "--include=" + ",".join(packages),
           "--aptopt=Acquire::Languages \"none\"",
           "--customize-hook=rm -rf \"$1\"/var/lib/apt/lists/* \"$1\"/var/cache/apt/*.bin"]
    cmd += [f"--dpkgopt=path-exclude={p}" for p in _BASE_DPKG_EXCLUDES]
    cmd += ["--dpkgopt=path-include=/usr/share/doc/*/copyright", BASE_SUITE]
    return cmd


def build_base(dockerfile: Path, log) -> tuple[str, bool]:
    """The base image (mmdebstrap of Debian from the machine's apt sources), tagged with the
    hash of its recipe; built only when podman does not have that tag. Returns (ref, rebuilt)."""
    recipe = base_recipe(dockerfile)
    inputs = _sha256("base/1", "\0".join(recipe), _apt_sources())
    ref = f"{BASE_IMAGE_NAME}:{BASE_SUITE}-{inputs[:12]}"
    if _image_id(ref):
        return ref, False
    started = time.monotonic()
    with tempfile.TemporaryDirectory(dir=images_dir()) as work:
        rootfs = Path(work) / "rootfs.tar"
        _run([*recipe, str(rootfs)], log)
        args = ["import", "--change", "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "--change", "ENV LANG=C.UTF-8", "--change", 'CMD ["/bin/bash"]', str(rootfs), ref]
        podman(args, log, capture=True)
    seconds = round(time.monotonic() - started, 1)
    tags = podman(["images", "--format", "{{.Repository}}:{{.Tag}}", BASE_IMAGE_NAME], log,
                  capture=True).split()
    for old in set(tags) - {ref}:  # an older recipe's base (kept while an image still uses it)
        subprocess.run([*podman_cmd(), "rmi", old], capture_output=True)
    (images_dir() / "base.json").write_text(json.dumps(
        {"ref": ref, "inputs": inputs, "build_seconds": seconds, "recipe": recipe}, indent=2) + "\n")
    print(f"built {ref} in {seconds} s", file=log, flush=True)
    return ref, True


# --------------------------------------------------------------------------- project


def _ignored(rel: str, patterns: list[str]) -> bool:
    parts = rel.split("/")
    for pat in patterns:
        if pat.startswith("**/"):
            if any(fnmatch.fnmatch(part, pat[3:]) for part in parts):
                return True
        elif fnmatch.fnmatch(rel, pat) or fnmatch.fnmatch(parts[0], pat):
            return True
    return False


def _dockerignore(context: Path) -> list[str]:
    path = context / ".dockerignore"
    if not path.is_file():
        return []
    return [line.strip().rstrip("/") for line in path.read_text().splitlines()
            if line.strip() and not line.startswith("#")]


def _copy_sources(dockerfile: Path) -> list[str]:
    """The context paths the Dockerfile's COPY/ADD lines read (multi-stage --from copies aside)."""
    sources = []
    for line in dockerfile.read_text().splitlines():
        words = line.split()
        if words and words[0].upper() in ("COPY", "ADD"):
            args = [w for w in words[1:] if not w.startswith("--")]
            if any(w.startswith("--from") for w in words[1:]):
                continue
            sources += args[:-1]
    return sources


def project_inputs(context: Path, dockerfile: Path, base_ref: str) -> str:
    """sha256 of the Dockerfile, the base and every file the Dockerfile copies (path, mode,
    content), leaving out what .dockerignore leaves out of the build context."""
    patterns = _dockerignore(context)
    h = hashlib.sha256()
    for part in ("project/1", base_ref, dockerfile.read_text()):
        h.update(_sha256(part).encode())
    for src in _copy_sources(dockerfile):
        top = context / src
        files = [top] if top.is_file() else sorted(p for p in top.rglob("*") if p.is_file())
        for f in files:
            rel = f.relative_to(context).as_posix()
            if _ignored(rel, patterns):
                continue
            h.update(_sha256(rel, oct(f.stat().st_mode & 0o111), f.read_bytes()).encode())
    return h.hexdigest()


# pip settings that say how to reach an index; paths (find-links, cert) stay on the host.
_PIP_KEYS = ("index-url", "extra-index-url", "trusted-host", "timeout", "default-timeout",
             "retries", "proxy", "client-cert")


def _host_pip_config() -> tuple[str, Path | None]:
    """This machine's pip configuration (files and PIP_* variables, as `pip config list` sees
    them) as a pip.conf for the build, and the CA bundle pip verifies TLS with, if one is set."""
    out = subprocess.run([sys.executable, "-m", "pip", "config", "list"],
                         capture_output=True, text=True).stdout
    settings, cert = {}, None
    for line in out.splitlines():
        key, _, value = line.partition("=")
        name = key.rsplit(".", 1)[-1]
        value = value.strip().strip("'\"")
        if name == "cert":
            cert = Path(value)
        elif name in _PIP_KEYS:
            settings[name] = value
    for var in ("PIP_CERT", "REQUESTS_CA_BUNDLE"):
        if cert is None and os.environ.get(var):
            cert = Path(os.environ[var])
    conf = "[global]\n" + "".join(f"{k} = {v}\n" for k, v in sorted(settings.items()))
    return conf, cert if cert and cert.is_file() else None


def build_project(log=sys.stderr, context: Path = ROOT, ref: str = PROJECT_IMAGE) -> Built:
    """The repository's Dockerfile, built by podman on the mmdebstrap base."""
    dockerfile = context / "Dockerfile"
    base_ref, _ = build_base(dockerfile, log)
    inputs = project_inputs(context, dockerfile, base_ref)
    if cached := _cached(ref, inputs):
        return cached
    started = time.monotonic()
    conf, cert = _host_pip_config()
    with tempfile.TemporaryDirectory(dir=images_dir()) as work:
        pip_conf = Path(work) / "pip.conf"
        pip_conf.write_text(conf)
        args = ["build", "--network=host", "--pull=never", "--layers", *ulimit_args(),
                f"--from={base_ref}", "--secret", f"id=pip.conf,src={pip_conf}",
                "-f", str(dockerfile), "-t", ref]
        if cert:
            args += ["--secret", f"id=pip-ca.crt,src={cert}"]
        podman([*args, str(context)], log)
    built = _save(ref, inputs, started, log, {"base": base_ref})
    # Replaced images, now untagged and childless, go; the intermediate images the new build
    # shares with them stay (they have children): the layer cache of the next build.
    podman(["image", "prune", "-f"], log, capture=True)
    return built


# --------------------------------------------------------------------------- add-ons

# ref -> (add-on name in pimlab.cluster.build.ADDONS, path in the image, image config)
_ADDON_IMAGES = {
    COREDNS_IMAGE: ("coredns", "coredns", ['ENTRYPOINT ["/coredns"]']),
    LOCAL_PATH_IMAGE: ("local-path-provisioner", "usr/bin/local-path-provisioner",
                       ['ENTRYPOINT ["/usr/bin/local-path-provisioner"]']),
}


def _build_addon(ref: str, log) -> Built:
    """A static Go binary from the module proxy (built by pimlab.cluster.build) alone in an
    image: no shell, no libc, as upstream's images FROM scratch/distroless."""
    from pimlab.cluster.build import addon_binary, build_addons  # the node's Go builds

    name, path, changes = _ADDON_IMAGES[ref]
    build_addons(log)
    binary = addon_binary(name)
    inputs = _sha256("addon/1", ref, path, "\0".join(changes), binary.read_bytes())
    if cached := _cached(ref, inputs):
        return cached
    started = time.monotonic()
    dirs = tuple(path.split("/")[:-1])
    dirs = tuple("/".join(dirs[: i + 1]) for i in range(len(dirs))) + ("tmp", "etc")
    _import_rootfs(_single_file_rootfs(binary, path, dirs), ref,
                   ["ENV PATH=/usr/local/bin:/usr/bin:/bin", *changes], log)
    return _save(ref, inputs, started, log, {"binary": str(binary)})


def _build_prometheus_operator(log) -> Built:
    """prometheus-operator's image as upstream lays it out (/bin/operator and
    /bin/prometheus-config-reloader, both static): one image serves the operator's Deployment
    and the config-reloader containers it adds to the Prometheus pods."""
    from pimlab.cluster import monitoring

    binaries = prometheus_operator_build.build(log)
    inputs = _sha256("prometheus-operator/1", PROMETHEUS_OPERATOR_IMAGE,
                     *(binaries[name].read_bytes() for name in sorted(binaries)))
    if cached := _cached(PROMETHEUS_OPERATOR_IMAGE, inputs):
        return cached
    started = time.monotonic()
    with tempfile.TemporaryDirectory(dir=images_dir()) as work:
        rootfs = monitoring.image_rootfs(Path(work) / "rootfs.tar", binaries)
        _import_rootfs(rootfs.read_bytes(), PROMETHEUS_OPERATOR_IMAGE,
                       ['ENTRYPOINT ["/bin/operator"]', "USER 65534:65534"], log)
    return _save(PROMETHEUS_OPERATOR_IMAGE, inputs, started, log)


def _build_prometheus(log) -> Built:
    """Prometheus alone in an image, laid out as upstream's: /bin/prometheus, data in /prometheus."""
    binary = prometheus_operator_build.build_prometheus(log)
    changes = ['ENTRYPOINT ["/bin/prometheus"]', "WORKDIR /prometheus", "USER 65534:65534"]
    inputs = _sha256("prometheus/1", PROMETHEUS_IMAGE, "\0".join(changes), binary.read_bytes())
    if cached := _cached(PROMETHEUS_IMAGE, inputs):
        return cached
    started = time.monotonic()
    _import_rootfs(_single_file_rootfs(binary, "bin/prometheus", ("bin", "tmp", "etc", "etc/prometheus", "prometheus")),
                   PROMETHEUS_IMAGE, changes, log)
    return _save(PROMETHEUS_IMAGE, inputs, started, log, {"binary": str(binary)})


# --------------------------------------------------------------------------- API

_BUILDERS = {
    PAUSE_IMAGE: _build_pause,
    PROJECT_IMAGE: build_project,
    COREDNS_IMAGE: lambda log: _build_addon(COREDNS_IMAGE, log),
    LOCAL_PATH_IMAGE: lambda log: _build_addon(LOCAL_PATH_IMAGE, log),
    PROMETHEUS_OPERATOR_IMAGE: _build_prometheus_operator,
    PROMETHEUS_IMAGE: _build_prometheus,
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


def status() -> list[dict]:
    """What the cache holds: one record per built image (ref, inputs, archive, sizes, times)."""
    records = []
    for ref in ALL_IMAGES:
        state = _load_state(ref) or {"ref": ref, "built": False}
        records.append(state)
    return records


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m pimlab.cluster.images",
                                     description="the node's images, built without a registry")
    sub = parser.add_subparsers(dest="command", required=True)
    p_build = sub.add_parser("build", help="build what changed (default: every image)")
    p_build.add_argument("refs", nargs="*", default=list(ALL_IMAGES))
    p_ensure = sub.add_parser("ensure", help="build, then import into a containerd what it lacks")
    p_ensure.add_argument("--address", required=True, help="containerd's socket")
    p_ensure.add_argument("refs", nargs="*", default=list(ALL_IMAGES))
    sub.add_parser("status", help="the cached images, as JSON")
    args = parser.parse_args(argv)

    if args.command == "build":
        for ref in args.refs:
            started = time.monotonic()
            built = build(ref, log=sys.stderr)
            size = built.archive.stat().st_size / 2**20
            print(f"{ref:52} {'built' if built.rebuilt else 'up to date':10} "
                  f"{time.monotonic() - started:7.1f} s {size:8.1f} MiB  {built.archive}")
    elif args.command == "ensure":
        for ref, what in ensure(args.refs, args.address, log=sys.stderr).items():
            print(f"{ref:52} {what}")
    else:
        print(json.dumps(status(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Build the local Kubernetes cluster's binaries from the Go module proxy.

kind needs a Docker engine; our machines have none. So the tests and the quick start run a real
control plane (etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubectl) and a real
node (kubelet, kube-proxy) compiled once with the machine's Go and cached outside the
repository, in a directory named after the versions so an upgrade never mixes binaries. All of
them come from one wrapper module and one `go build` (the go command then schedules every
package's compile and the seven links together, across the cores). kwok, which only the kwok
nodes need (kwok-only clusters, the tests' and benchmarks' simulated namespaces), is built apart
(`build_kwok()`), when a cluster first starts it. The cluster add-ons (CoreDNS,
local-path-provisioner) are `go install`ed at fixed versions into their own versioned directory.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from pimlab.cluster.layout import cache_root
from pimlab.cluster.progress import Progress, run

KUBERNETES_VERSION = "v1.34.4"
KWOK_VERSION = "v0.7.0"
# Upstream's go.mod for 1.34 says `go 1.24.0` and `godebug default=go1.24`.
GO_DIRECTIVE = "1.24.0"
GODEBUG_DEFAULT = "go1.24"

KUBE_COMMANDS = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl",
                 "kubelet", "kube-proxy")
ETCD_PACKAGE = "go.etcd.io/etcd/server/v3"
#: binary name -> its main package, all in the control plane's wrapper module
PACKAGES = {**{c: f"k8s.io/kubernetes/cmd/{c}" for c in KUBE_COMMANDS}, "etcd": ETCD_PACKAGE}
BINARIES = tuple(PACKAGES)
KWOK_PACKAGE = f"sigs.k8s.io/kwok/cmd/kwok@{KWOK_VERSION}"
# What a cold build takes on the 2-core machine (docs/benchmarks.md's figures), until one is
# measured here (progress.py).
CONTROLPLANE_COLD_SECONDS = 10 * 60
KWOK_COLD_SECONDS = 4 * 60
ADDONS_COLD_SECONDS = 5 * 60


def bin_dir() -> Path:
    return cache_root() / f"controlplane-k8s-{KUBERNETES_VERSION}-kwok-{KWOK_VERSION}" / "bin"


def is_built() -> bool:
    return all((bin_dir() / name).is_file() for name in BINARIES)


def kwok_binary() -> Path:
    return bin_dir() / "kwok"


def kwok_built() -> bool:
    return kwok_binary().is_file()


def go(args: list[str], cwd: Path, log, env: dict | None = None) -> None:
    """`go ARGS` in `cwd` with CGO off, its output into `log`; raises naming the log on failure."""
    env = dict(os.environ, CGO_ENABLED="0", GOFLAGS="-buildvcs=false", **(env or {}))
    run(["go", *args], log, cwd=cwd, env=env, what=f"go {args[0]} in {cwd}")


@contextmanager
def build_lock(directory: Path) -> Iterator[None]:
    """`directory`'s build lock, held for the block: two builds at once (a test run and `make
    lab`) would race on the same wrapper module and outputs."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / "build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def build_once(directory: Path, done: Callable[[], bool], build_missing: Callable[[], None],
               what: str, log) -> None:
    """`build_missing()` under `directory`'s build lock unless `done()`."""
    if done():
        return
    with build_lock(directory):
        if done():
            return
        started = time.monotonic()
        print(f"building {what} (once)", file=log, flush=True)
        build_missing()
        print(f"built {what} in {time.monotonic() - started:.0f} s", file=log, flush=True)


def _staging_replaces(work: Path, log) -> list[str]:
    """Map every staging module that k8s.io/kubernetes pins at v0.0.0 to its published v0.X.Y."""
    out = run(["go", "mod", "download", "-json", f"k8s.io/kubernetes@{KUBERNETES_VERSION}"], log,
              cwd=work, capture=True, what=f"go mod download k8s.io/kubernetes@{KUBERNETES_VERSION}")
    gomod = Path(json.loads(out)["GoMod"]).read_text()
    staging_version = "v0." + KUBERNETES_VERSION.split(".", 1)[1]
    modules = sorted(
        {line.split()[0] for line in gomod.splitlines() if "=> ./staging/src/" in line}
    )
    print(f"{len(modules)} staging modules -> {staging_version}", file=log, flush=True)
    return [f"\t{m} => {m} {staging_version}" for m in modules]


def _version_ldflags() -> str:
    major, minor = KUBERNETES_VERSION.lstrip("v").split(".")[:2]
    values = {
        "gitVersion": KUBERNETES_VERSION,
        "gitMajor": major,
        "gitMinor": minor,
        "gitTreeState": "clean",
        "gitCommit": f"module-{KUBERNETES_VERSION}",
        "buildDate": "1970-01-01T00:00:00Z",
    }
    flags = ["-s", "-w"]
    for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [f"-X {pkg}.{key}={val}" for key, val in values.items()]
    return " ".join(flags)


def build(log=sys.stderr) -> Path:
    """Compile every control-plane and node binary that is missing into bin_dir(); return
    bin_dir()."""
    if shutil.which("go") is None:
        raise RuntimeError("Go is not installed: the control plane is built with the machine's Go")
    target = bin_dir()
    build_once(target.parent, is_built, lambda: _build_missing(target, log),
               f"the control plane into {target} (20-40 min cold on 2 cores)", log)
    return target


def _build_missing(target: Path, log) -> None:
    """One `go build` of every missing binary into a staging directory, in the wrapper module."""
    kube_mod = control_plane_module(log)
    target.mkdir(parents=True, exist_ok=True)
    missing = [name for name in BINARIES if not (target / name).is_file()]
    staging = target.parent / "work" / "out"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    packages = [PACKAGES[name] for name in missing]
    # Per-package linker flags: the Kubernetes commands get their version stamped, etcd its own.
    go(["build", "-trimpath", f"-ldflags=k8s.io/kubernetes/cmd/...={_version_ldflags()}",
        f"-ldflags={ETCD_PACKAGE}=-s -w", "-o", f"{staging}/", *packages], kube_mod, log)
    for name in missing:
        (staging / exec_name(PACKAGES[name])).rename(target / name)


def control_plane_module(log) -> Path:
    """The control plane's wrapper module (k8s.io/kubernetes, its staging modules at their
    published versions, and the etcd server at the version Kubernetes pins), written and tidied;
    its directory."""
    kube_mod = bin_dir().parent / "work" / "kubernetes"
    kube_mod.mkdir(parents=True, exist_ok=True)
    (kube_mod / "go.mod").write_text("module pimlab.local/controlplane\n")
    replaces = _staging_replaces(kube_mod, log)
    (kube_mod / "go.mod").write_text(
        "module pimlab.local/controlplane\n\n"
        f"go {GO_DIRECTIVE}\n\ngodebug default={GODEBUG_DEFAULT}\n\n"
        f"require k8s.io/kubernetes {KUBERNETES_VERSION}\n\n"
        "replace (\n" + "\n".join(replaces) + "\n)\n"
    )
    # A blank-import file keeps the etcd server module in the graph at the version
    # Kubernetes itself pins, so etcd and the apiserver agree on the storage client.
    (kube_mod / "tools.go").write_text(
        "//go:build tools\n\npackage tools\n\n"
        "import (\n" + "".join(f'\t_ "{pkg}"\n' for pkg in PACKAGES.values()) + ")\n"
    )
    go(["mod", "tidy", "-e"], kube_mod, log)
    return kube_mod


def module_versions(work: Path, log) -> dict[str, str]:
    """path -> version of every module the module at `work` selects (a replacement's version
    where one is given), the main module aside."""
    template = "{{if .Version}}{{.Path}} {{with .Replace}}{{.Version}}{{else}}{{.Version}}{{end}}{{end}}"
    out = run(["go", "list", "-m", "-f", template, "all"], log, cwd=work, capture=True,
              what=f"go list -m all in {work}")
    return dict(line.split() for line in out.splitlines() if line.strip())


def pinned_wrapper(work: Path, module: str, version: str, log) -> None:
    """A wrapper module at `work` requiring `module`@`version`, every dependency it shares with
    the control plane raised to the control plane's version where that is newer (minimal version
    selection keeps the newer of the two). Then those packages are the very ones the control
    plane's build compiled: Go's build cache serves them instead of compiling them again."""
    work.mkdir(parents=True, exist_ok=True)
    (work / "tools.go").write_text(f'//go:build tools\n\npackage tools\n\nimport _ "{module}"\n')
    head = f"module pimlab.local/{module.rsplit('/', 1)[1]}\n\ngo {GO_DIRECTIVE}\n\nrequire {module} {version}\n"
    (work / "go.mod").write_text(head)
    go(["mod", "tidy", "-e"], work, log)
    own = module_versions(work, log)
    with build_lock(bin_dir().parent):
        control_plane = module_versions(control_plane_module(log), log)
    shared = sorted(path for path in own if path in control_plane and path != module)
    (work / "go.mod").write_text(head + "\nrequire (\n" + "".join(
        f"\t{path} {control_plane[path]}\n" for path in shared) + ")\n")
    go(["mod", "tidy", "-e"], work, log)
    print(f"{len(shared)} modules shared with the control plane, required at its versions",
          file=log, flush=True)


def exec_name(package: str) -> str:
    """The file `go build -o DIR/` writes for a main package: its last path element, or the one
    before a major-version suffix (`go.etcd.io/etcd/server/v3` -> `server`)."""
    parts = package.split("/")
    if len(parts) > 1 and parts[-1][:1] == "v" and parts[-1][1:].isdigit():
        return parts[-2]
    return parts[-1]


def build_kwok(log=sys.stderr) -> Path:
    """`go install` kwok into bin_dir() once (its own module graph: `go install PKG@VERSION`);
    return its path."""
    if shutil.which("go") is None:
        raise RuntimeError("Go is not installed: kwok is built with the machine's Go")
    target = kwok_binary()

    def missing() -> None:
        gobin = target.parent.parent / "work" / "kwok-bin"
        gobin.mkdir(parents=True, exist_ok=True)
        go(["install", "-trimpath", "-ldflags=-s -w", KWOK_PACKAGE], gobin.parent, log,
           env={"GOBIN": str(gobin)})
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(gobin / "kwok"), target)

    build_once(target.parent.parent, kwok_built, missing, f"kwok {KWOK_VERSION} into {target}", log)
    return target


# Add-ons, as kind has them: cluster DNS and a dynamic provisioner for a default StorageClass.
ADDONS = {
    "coredns": ("github.com/coredns/coredns", "v1.12.1"),
    # v0.0.31 is not served by the module proxy
    "local-path-provisioner": ("github.com/rancher/local-path-provisioner", "v0.0.30"),
}
# Built in a pinned_wrapper(): local-path-provisioner's Kubernetes libraries (client-go v0.30) and
# everything they import are older than the control plane's, so raised to its versions 511 of its
# 523 packages are cache hits (docs/benchmarks.md). CoreDNS is `go install`ed as released: it
# requires newer protobuf, prometheus/common and x/time than Kubernetes 1.34, which leaves 6% of
# its packages to share.
PINNED_ADDONS = ("local-path-provisioner",)


def addons_dir() -> Path:
    versions = "-".join(f"{name}-{version}" for name, (_, version) in ADDONS.items())
    return cache_root() / f"addons-{versions}" / "bin"


def addon_binary(name: str) -> Path:
    return addons_dir() / name


def addons_built() -> bool:
    return all(addon_binary(name).is_file() for name in ADDONS)


def build_addons(log=sys.stderr) -> Path:
    """Build every add-on that is missing into addons_dir() (`go install`, or in a pinned wrapper
    module: PINNED_ADDONS); return addons_dir()."""
    if shutil.which("go") is None:
        raise RuntimeError("Go is not installed: the add-ons are built with the machine's Go")
    target = addons_dir()
    if addons_built():
        return target
    with build_lock(target.parent):
        target.mkdir(parents=True, exist_ok=True)
        for name, (module, version) in ADDONS.items():
            if addon_binary(name).is_file():
                continue
            if name in PINNED_ADDONS:
                work = target.parent / "work" / name
                pinned_wrapper(work, module, version, log)
                partial = target / f"{name}.partial"
                go(["build", "-trimpath", "-ldflags=-s -w", "-o", str(partial), module], work, log)
                partial.rename(addon_binary(name))
                continue
            gobin = target.parent / "gobin"
            gobin.mkdir(exist_ok=True)
            go(["install", "-trimpath", "-ldflags=-s -w", f"{module}@{version}"], target.parent, log,
               env={"GOBIN": str(gobin)})
            shutil.move(str(gobin / module.rsplit("/", 1)[1]), addon_binary(name))
    return target


def build_step(progress: Progress) -> Path:
    """build() as a step of `progress`: one line, Go's output in the step's log."""
    return progress.build_step("controlplane", f"control plane and node binaries (Kubernetes "
                               f"{KUBERNETES_VERSION}, etcd)", CONTROLPLANE_COLD_SECONDS, is_built, build)


def kwok_step(progress: Progress) -> Path:
    """build_kwok() as a step of `progress`."""
    return progress.build_step("kwok", f"kwok {KWOK_VERSION} binary", KWOK_COLD_SECONDS, kwok_built,
                               build_kwok)


def addons_step(progress: Progress) -> Path:
    """build_addons() as a step of `progress`."""
    return progress.build_step("addons", "add-on binaries (CoreDNS, local-path-provisioner)",
                               ADDONS_COLD_SECONDS, addons_built, build_addons)

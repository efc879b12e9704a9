"""Build the local Kubernetes cluster's binaries from the Go module proxy.

kind needs a Docker engine; our machines have none. So the tests and the quick start run a real
control plane (etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubectl, kwok) and
a real node (kubelet, kube-proxy) compiled once with the machine's Go and cached outside the
repository, in a directory named after the versions so an upgrade never mixes binaries. kubelet
and kube-proxy come from the same wrapper module as the control plane: once that is built they
are an incremental build of seconds. The cluster add-ons (CoreDNS, local-path-provisioner) are
`go install`ed at fixed versions into their own versioned directory.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Callable

from pimlab.cluster.layout import cache_root
from pimlab.cluster.progress import Progress, run

KUBERNETES_VERSION = "v1.34.4"
KWOK_VERSION = "v0.7.0"
# Upstream's go.mod for 1.34 says `go 1.24.0` and `godebug default=go1.24`.
GO_DIRECTIVE = "1.24.0"
GODEBUG_DEFAULT = "go1.24"

KUBE_COMMANDS = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl",
                 "kubelet", "kube-proxy")
BINARIES = (*KUBE_COMMANDS, "etcd", "kwok")
# What a cold build takes on the 2-core machine (docs/benchmarks.md's figures), until one is
# measured here (progress.py).
CONTROLPLANE_COLD_SECONDS = 10 * 60
ADDONS_COLD_SECONDS = 5 * 60


def bin_dir() -> Path:
    return cache_root() / f"controlplane-k8s-{KUBERNETES_VERSION}-kwok-{KWOK_VERSION}" / "bin"


def is_built() -> bool:
    return all((bin_dir() / name).is_file() for name in BINARIES)


def go(args: list[str], cwd: Path, log, env: dict | None = None) -> None:
    """`go ARGS` in `cwd` with CGO off, its output into `log`; raises naming the log on failure."""
    env = dict(os.environ, CGO_ENABLED="0", GOFLAGS="-buildvcs=false", **(env or {}))
    run(["go", *args], log, cwd=cwd, env=env, what=f"go {args[0]} in {cwd}")


def build_once(directory: Path, done: Callable[[], bool], build_missing: Callable[[], None],
               what: str, log) -> None:
    """`build_missing()` under `directory`'s build lock unless `done()`: two builds at once (a
    test run and `make lab`) would race on the same wrapper module and outputs."""
    if done():
        return
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / "build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
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
    """Compile every binary that is missing into bin_dir(); return bin_dir()."""
    if shutil.which("go") is None:
        raise RuntimeError("Go is not installed: the control plane is built with the machine's Go")
    target = bin_dir()
    if is_built():
        return target
    target.mkdir(parents=True, exist_ok=True)
    # Two builds at once (a test run and `make lab`) would race on the wrapper module.
    with open(target.parent / "build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not is_built():
            print(f"building the control plane into {target} (once; 20-40 min cold on 2 cores)",
                  file=log, flush=True)
            _build_missing(target, log)
    return target


def _build_missing(target: Path, log) -> None:
    work = target.parent / "work"
    kube_mod = work / "kubernetes"
    kube_mod.mkdir(parents=True, exist_ok=True)

    missing_kube = [c for c in (*KUBE_COMMANDS, "etcd") if not (target / c).is_file()]
    if missing_kube:
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
            "import (\n"
            + "".join(f'\t_ "k8s.io/kubernetes/cmd/{c}"\n' for c in KUBE_COMMANDS)
            + '\t_ "go.etcd.io/etcd/server/v3"\n)\n'
        )
        go(["mod", "tidy", "-e"], kube_mod, log)
        for name in missing_kube:
            pkg = "go.etcd.io/etcd/server/v3" if name == "etcd" else f"k8s.io/kubernetes/cmd/{name}"
            ldflags = "-s -w" if name == "etcd" else _version_ldflags()
            partial = target / f"{name}.partial"
            go(["build", "-trimpath", f"-ldflags={ldflags}", "-o", str(partial), pkg],
                kube_mod, log)
            partial.rename(target / name)

    if not (target / "kwok").is_file():
        env_bin = work / "kwok-bin"
        env_bin.mkdir(parents=True, exist_ok=True)
        go(["install", "-trimpath", "-ldflags=-s -w", f"sigs.k8s.io/kwok/cmd/kwok@{KWOK_VERSION}"],
           work, log, env={"GOBIN": str(env_bin)})
        shutil.move(str(env_bin / "kwok"), target / "kwok")


# Add-ons, as kind has them: cluster DNS and a dynamic provisioner for a default StorageClass.
ADDONS = {
    "coredns": ("github.com/coredns/coredns", "v1.12.1"),
    # v0.0.31 is not served by the module proxy
    "local-path-provisioner": ("github.com/rancher/local-path-provisioner", "v0.0.30"),
}


def addons_dir() -> Path:
    versions = "-".join(f"{name}-{version}" for name, (_, version) in ADDONS.items())
    return cache_root() / f"addons-{versions}" / "bin"


def addon_binary(name: str) -> Path:
    return addons_dir() / name


def addons_built() -> bool:
    return all(addon_binary(name).is_file() for name in ADDONS)


def build_addons(log=sys.stderr) -> Path:
    """`go install` every add-on that is missing into addons_dir(); return addons_dir()."""
    if shutil.which("go") is None:
        raise RuntimeError("Go is not installed: the add-ons are built with the machine's Go")
    target = addons_dir()
    if addons_built():
        return target
    target.mkdir(parents=True, exist_ok=True)
    with open(target.parent / "build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for name, (module, version) in ADDONS.items():
            if addon_binary(name).is_file():
                continue
            gobin = target.parent / "gobin"
            gobin.mkdir(exist_ok=True)
            go(["install", "-trimpath", "-ldflags=-s -w", f"{module}@{version}"], target.parent, log,
               env={"GOBIN": str(gobin)})
            shutil.move(str(gobin / module.rsplit("/", 1)[1]), addon_binary(name))
    return target


def build_step(progress: Progress) -> Path:
    """build() as a step of `progress`: one line, Go's output in the step's log."""
    return progress.build_step("controlplane", f"control plane binaries (Kubernetes {KUBERNETES_VERSION}, "
                               "etcd, kwok)", CONTROLPLANE_COLD_SECONDS, is_built, build)


def addons_step(progress: Progress) -> Path:
    """build_addons() as a step of `progress`."""
    return progress.build_step("addons", "add-on binaries (CoreDNS, local-path-provisioner)",
                               ADDONS_COLD_SECONDS, addons_built, build_addons)

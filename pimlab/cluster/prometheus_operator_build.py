"""Build prometheus-operator and its config reloader from the Go module proxy.

kube-prometheus-stack runs prometheus-operator from its image; our machines pull no images, so
the two binaries are compiled once with the machine's Go and cached beside the control plane,
in a directory named after the version.

`go install github.com/prometheus-operator/prometheus-operator/cmd/operator@v0.85.0` is refused:
upstream's go.mod replaces its two API sub-modules (`pkg/apis/monitoring`, `pkg/client`) with
local directories. A wrapper module requires the operator module and points those two at their
published versions of the same tag, which is what the replace directives mean upstream.
(v0.86.1's checksum is not in the checksum database the proxy serves; v0.85.0 is.)

Prometheus itself is built here too (`build_prometheus()`): Debian's prometheus, which the
project's image carries for promtool and the loopback tests, is compiled without Kubernetes
service discovery (no `discovery/kubernetes` in Debian's build: a `kubernetes_sd_configs` block,
which is what prometheus-operator writes for every ServiceMonitor, is refused as an unknown
field). Upstream's `cmd/prometheus` at the version prometheus-operator v0.85.0 defaults to
(v3.5.0, Go module version v0.305.0) is built the same way, in a wrapper module (its go.mod has a
replace directive, so `go install` refuses it). Its web UI is left out (the `builtinassets` tag
needs the UI built with npm); the HTTP API, which is what the lab reads, is all there.

`build()` is what the cluster code calls; `binaries()` names what it returns.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from pimlab.cluster.build import build_once, go
from pimlab.cluster.layout import cache_root
from pimlab.cluster.progress import Progress, run_steps

VERSION = "v0.85.0"
MODULE = "github.com/prometheus-operator/prometheus-operator"
SUBMODULES = (f"{MODULE}/pkg/apis/monitoring", f"{MODULE}/pkg/client")
# binary name -> package
COMMANDS = {
    "prometheus-operator": f"{MODULE}/cmd/operator",
    "prometheus-config-reloader": f"{MODULE}/cmd/prometheus-config-reloader",
}


PROMETHEUS_VERSION = "v3.5.0"
PROMETHEUS_MODULE = "github.com/prometheus/prometheus"
PROMETHEUS_MODULE_VERSION = "v0.305.0"  # the module's tag of v3.5.0
# What a cold build takes on the 2-core machine (docs/benchmarks.md's figures), until one is
# measured here (progress.py).
COLD_SECONDS = 12 * 60
PROMETHEUS_COLD_SECONDS = 16 * 60


def prometheus_binary() -> Path:
    return cache_root() / f"prometheus-{PROMETHEUS_VERSION}" / "bin" / "prometheus"


def prometheus_built() -> bool:
    return prometheus_binary().is_file()


def build_prometheus(log=sys.stderr) -> Path:
    """Compile Prometheus once into prometheus_binary() (about 10 min cold on 2 cores)."""
    target = prometheus_binary()

    def missing() -> None:
        work = target.parent.parent / "work"
        work.mkdir(parents=True, exist_ok=True)
        target.parent.mkdir(parents=True, exist_ok=True)
        (work / "go.mod").write_text(f"module pimlab.local/prometheus\n\ngo 1.23.0\n\n"
                                     f"require {PROMETHEUS_MODULE} {PROMETHEUS_MODULE_VERSION}\n")
        (work / "tools.go").write_text(
            f'//go:build tools\n\npackage tools\n\nimport _ "{PROMETHEUS_MODULE}/cmd/prometheus"\n')
        go(["mod", "tidy", "-e"], work, log)
        pkg = "github.com/prometheus/common/version"
        values = {"Version": PROMETHEUS_VERSION.lstrip("v"), "Revision": f"module-{PROMETHEUS_MODULE_VERSION}",
                  "Branch": "module", "BuildUser": "pimlab", "BuildDate": "19700101-00:00:00"}
        ldflags = " ".join(["-s", "-w", *(f"-X {pkg}.{k}={v}" for k, v in values.items())])
        partial = target.with_suffix(".partial")
        go(["build", "-trimpath", f"-ldflags={ldflags}", "-o", str(partial), f"{PROMETHEUS_MODULE}/cmd/prometheus"],
           work, log)
        partial.rename(target)

    build_once(target.parent.parent, prometheus_built, missing,
               f"prometheus {PROMETHEUS_VERSION} into {target} (~10 min cold)", log)
    return target


def bin_dir() -> Path:
    return cache_root() / f"prometheus-operator-{VERSION}" / "bin"


def binaries() -> dict[str, Path]:
    """Where each binary is (or will be) once built."""
    return {name: bin_dir() / name for name in COMMANDS}


def is_built() -> bool:
    return all(path.is_file() for path in binaries().values())


def module_dir(log=sys.stderr) -> Path:
    """The operator module's source in the Go module cache (its example CRDs live there)."""
    work = bin_dir().parent / "work"
    work.mkdir(parents=True, exist_ok=True)
    if not (work / "go.mod").is_file():
        (work / "go.mod").write_text("module pimlab.local/prometheus-operator\n")
    out = subprocess.run(
        ["go", "mod", "download", "-json", f"{MODULE}@{VERSION}"],
        cwd=work, capture_output=True, text=True,
    )
    if out.returncode != 0:
        raise RuntimeError(f"go mod download {MODULE}@{VERSION} failed: {out.stderr or out.stdout}")
    return Path(json.loads(out.stdout)["Dir"])


def _ldflags() -> str:
    pkg = "github.com/prometheus/common/version"
    values = {
        "Version": VERSION.lstrip("v"),
        "Revision": f"module-{VERSION}",
        "Branch": "module",
        "BuildUser": "pimlab",
        "BuildDate": "19700101-00:00:00",
    }
    return " ".join(["-s", "-w", *(f"-X {pkg}.{k}={v}" for k, v in values.items())])


def build(log=sys.stderr) -> dict[str, Path]:
    """Compile whatever is missing into bin_dir(); return binaries()."""
    target = bin_dir()

    def missing() -> None:
        target.mkdir(parents=True, exist_ok=True)
        _build_missing(target, log)

    build_once(target.parent, is_built, missing,
               f"prometheus-operator {VERSION} into {target} (~2 min cold)", log)
    return binaries()


def _build_missing(target: Path, log) -> None:
    work = target.parent / "work"
    work.mkdir(parents=True, exist_ok=True)
    upstream = (module_dir(log) / "go.mod").read_text()
    go_line = next((line for line in upstream.splitlines() if line.startswith("go ")), "go 1.24.0")
    (work / "go.mod").write_text(
        "module pimlab.local/prometheus-operator\n\n"
        f"{go_line}\n\n"
        f"require {MODULE} {VERSION}\n\n"
        "replace (\n" + "".join(f"\t{m} => {m} {VERSION}\n" for m in SUBMODULES) + ")\n"
    )
    (work / "tools.go").write_text(
        "//go:build tools\n\npackage tools\n\nimport (\n"
        + "".join(f'\t_ "{pkg}"\n' for pkg in COMMANDS.values())
        + ")\n"
    )
    go(["mod", "tidy", "-e"], work, log)
    for name, pkg in COMMANDS.items():
        if (target / name).is_file():
            continue
        partial = target / f"{name}.partial"
        go(["build", "-trimpath", f"-ldflags={_ldflags()}", "-o", str(partial), pkg], work, log)
        partial.rename(target / name)


def build_step(progress: Progress) -> dict[str, Path]:
    """build() as a step of `progress`: one line, Go's output in the step's log."""
    return progress.build_step("prometheus-operator", f"prometheus-operator {VERSION} binaries",
                               COLD_SECONDS, is_built, build)


def prometheus_step(progress: Progress) -> Path:
    """build_prometheus() as a step of `progress`."""
    return progress.build_step("prometheus", f"Prometheus {PROMETHEUS_VERSION} binary",
                               PROMETHEUS_COLD_SECONDS, prometheus_built, build_prometheus)


if __name__ == "__main__":
    sys.exit(run_steps(build_step, prometheus_step))

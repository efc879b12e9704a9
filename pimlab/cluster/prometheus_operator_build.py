"""Build prometheus-operator and its config reloader from the Go module proxy.

kube-prometheus-stack runs prometheus-operator from its image; our machines pull no images, so
the two binaries are compiled once with the machine's Go and cached beside the control plane,
in a directory named after the version.

`go install github.com/prometheus-operator/prometheus-operator/cmd/operator@v0.85.0` is refused:
upstream's go.mod replaces its two API sub-modules (`pkg/apis/monitoring`, `pkg/client`) with
local directories. A wrapper module requires the operator module and points those two at their
published versions of the same tag, which is what the replace directives mean upstream.
(v0.86.1's checksum is not in the checksum database the proxy serves; v0.85.0 is.)

`build()` is what the cluster code calls; `binaries()` names what it returns.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from pimlab.cluster.build import build_once, cache_root, go

VERSION = "v0.85.0"
MODULE = "github.com/prometheus-operator/prometheus-operator"
SUBMODULES = (f"{MODULE}/pkg/apis/monitoring", f"{MODULE}/pkg/client")
# binary name -> package
COMMANDS = {
    "prometheus-operator": f"{MODULE}/cmd/operator",
    "prometheus-config-reloader": f"{MODULE}/cmd/prometheus-config-reloader",
}


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


if __name__ == "__main__":
    for name, path in build().items():
        print(name, path)

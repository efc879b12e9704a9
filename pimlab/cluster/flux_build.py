"""Build Flux's source-controller and kustomize-controller from the Go module proxy.

Flux runs its controllers from images; our machines pull none, so the two binaries are compiled
once with the machine's Go and cached beside the control plane, in a directory named after the
versions. helm-controller is not built: the Git path of cluster A (clusters/local/flux) uses no
HelmRelease.

`go install github.com/fluxcd/source-controller@v1.9.0` is refused: upstream's go.mod replaces
its `api` sub-module with a local directory and pins a few dependencies (go-digest, kustomize).
Each controller gets a wrapper module that requires it, carries its non-local replace directives
over unchanged and points each local one at the published module of the same tag, which is what
the directive means upstream; its requirements and go.sum are upstream's, so the build uses the
versions upstream tested. Versions: v1.10 needs Go 1.27, newer than the machine's; source-controller
v1.9.4-v1.9.6 need github.com/fluxcd/pkg/artifact v0.18.2+, which the module proxy does not serve,
so source-controller is v1.9.0 (artifact v0.18.0) and kustomize-controller v1.9.6, the same Flux
minor (their APIs are v1 on both sides).

`build()` is what the cluster code calls; `binaries()` names what it returns and `crd_files()`
the controllers' CRDs, read from the same modules.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

from pimlab.cluster.build import build_once, go
from pimlab.cluster.layout import cache_root
from pimlab.cluster.progress import Progress, run_steps
from pimlab.cluster.thirdparty_crds import FLUX_KUSTOMIZE_CONTROLLER, FLUX_SOURCE_CONTROLLER

# binary name -> (module, version); the binary is the module's root package. The versions are
# pinned with the CRDs the tests install, in thirdparty_crds.
CONTROLLERS = {
    "source-controller": (FLUX_SOURCE_CONTROLLER.module, FLUX_SOURCE_CONTROLLER.version),
    "kustomize-controller": (FLUX_KUSTOMIZE_CONTROLLER.module, FLUX_KUSTOMIZE_CONTROLLER.version),
}
# What a cold build takes on the 2-core machine (docs/benchmarks.md's figure), until one is
# measured here (progress.py).
COLD_SECONDS = 35 * 60


def bin_dir() -> Path:
    versions = "-".join(f"{name.split('-')[0]}-{v}" for name, (_, v) in CONTROLLERS.items())
    return cache_root() / f"flux-{versions}" / "bin"


def binaries() -> dict[str, Path]:
    """Where each binary is (or will be) once built."""
    return {name: bin_dir() / name for name in CONTROLLERS}


def is_built() -> bool:
    return all(path.is_file() for path in binaries().values())


def _work(name: str) -> Path:
    work = bin_dir().parent / "work" / name
    work.mkdir(parents=True, exist_ok=True)
    if not (work / "go.mod").is_file():
        (work / "go.mod").write_text(f"module pimlab.local/{name}\n")
    return work


def module_dir(name: str) -> Path:
    """A controller module's source in the Go module cache (its CRDs live under config/)."""
    module, version = CONTROLLERS[name]
    out = subprocess.run(["go", "mod", "download", "-json", f"{module}@{version}"],
                         cwd=_work(name), capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"go mod download {module}@{version} failed: {out.stderr or out.stdout}")
    return Path(json.loads(out.stdout)["Dir"])


def crd_files() -> list[Path]:
    """Every CRD the two controllers serve, from their modules' config/crd/bases."""
    return sorted(p for name in CONTROLLERS
                  for p in (module_dir(name) / "config" / "crd" / "bases").glob("*.yaml"))


def wrapper_gomod(name: str, upstream: str) -> str:
    """The wrapper module's go.mod: upstream's own (its requirements pin what was tested),
    renamed, requiring the controller itself, each local replace (`=> ./api`) resolved to the
    published module at the controller's version."""
    module, version = CONTROLLERS[name]
    lines = []
    for line in upstream.splitlines():
        if line.startswith("module "):
            line = f"module pimlab.local/{name}\n\nrequire {module} {version}"
        else:
            local = re.match(r"^(\s*(?:replace\s+)?)(\S+)(\s+\S+)?\s*=>\s*\.\S*\s*$", line)
            if local:
                line = f"{local.group(1)}{local.group(2)} => {local.group(2)} {version}"
        lines.append(line)
    return "\n".join(lines) + "\n"


def build(log=sys.stderr) -> dict[str, Path]:
    """Compile whatever is missing into bin_dir(); return binaries()."""
    target = bin_dir()

    def missing() -> None:
        target.mkdir(parents=True, exist_ok=True)
        for name in CONTROLLERS:
            if not (target / name).is_file():
                _build_one(name, target, log)

    build_once(target.parent, is_built, missing,
               f"Flux controllers into {target} (~15-30 min cold on 2 cores)", log)
    return binaries()


def _build_one(name: str, target: Path, log) -> None:
    module, _ = CONTROLLERS[name]
    work = _work(name)
    upstream = (module_dir(name) / "go.mod").read_text()
    (work / "go.mod").write_text(wrapper_gomod(name, upstream))
    # Upstream's go.sum; `-mod=mod` adds the sums of the controller's own modules. (`go mod
    # tidy` is no use: it also resolves the tests of dependencies, some not served.)
    shutil.copyfile(module_dir(name) / "go.sum", work / "go.sum")
    partial = target / f"{name}.partial"
    go(["build", "-mod=mod", "-trimpath", "-ldflags=-s -w", "-o", str(partial), module], work, log)
    partial.rename(target / name)


def build_step(progress: Progress) -> dict[str, Path]:
    """build() as a step of `progress`: one line, Go's output in the step's log."""
    versions = ", ".join(f"{name} {version}" for name, (_, version) in CONTROLLERS.items())
    return progress.build_step("flux", f"Flux controllers ({versions})", COLD_SECONDS, is_built, build)


if __name__ == "__main__":
    sys.exit(run_steps(build_step))

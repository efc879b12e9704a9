"""Third-party CRDs, resolved from the Go modules their projects publish.

The tests check what the project renders (Flux objects, Chaos Mesh chaos, grafana-operator
objects) against the real CRDs on a real API server. Flux's controllers, Chaos Mesh and
grafana-operator each publish a Go module whose `config/crd/bases/` holds those manifests, so
the build fetches the module zips (`go mod download`, no compilation; the checksum database
vouches for their content) and copies the named CRDs into a directory of the cache named after
the pins. prometheus-operator's CRDs stay in `crds/thirdparty/` (the lab installs them too).

The versions are pinned here, and only here: `flux_build` compiles the Flux controllers at the
versions whose CRDs this module serves.
- source-controller v1.9.0 and kustomize-controller v1.9.6: the controllers the lab builds
  (see flux_build for why those two).
- helm-controller v1.6.3: only its HelmRelease CRD (cluster B's manifests use it).
- Chaos Mesh: its go.mod declares `github.com/chaos-mesh/chaos-mesh` without a `/v2` suffix, so
  its v2 tags are not versions of that module and the proxy refuses them; its commits are served
  as pseudo-versions, and this one's three CRDs are byte-identical to v2.8.3's.
- grafana-operator v5.24.0.

    python -m pimlab.cluster.thirdparty_crds     # resolve, as a progress step
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from pimlab.cluster.build import build_once
from pimlab.cluster.layout import cache_root
from pimlab.cluster.progress import Progress, run_steps

BASES = "config/crd/bases"


@dataclass(frozen=True)
class CrdModule:
    """A Go module at a pinned version, and the CRD files taken from its config/crd/bases."""
    module: str
    version: str
    files: tuple[str, ...]


FLUX_SOURCE_CONTROLLER = CrdModule(
    "github.com/fluxcd/source-controller", "v1.9.0",
    ("source.toolkit.fluxcd.io_gitrepositories.yaml",
     "source.toolkit.fluxcd.io_helmrepositories.yaml"))
FLUX_KUSTOMIZE_CONTROLLER = CrdModule(
    "github.com/fluxcd/kustomize-controller", "v1.9.6",
    ("kustomize.toolkit.fluxcd.io_kustomizations.yaml",))
FLUX_HELM_CONTROLLER = CrdModule(
    "github.com/fluxcd/helm-controller", "v1.6.3",
    ("helm.toolkit.fluxcd.io_helmreleases.yaml",))
CHAOS_MESH = CrdModule(
    "github.com/chaos-mesh/chaos-mesh", "v0.9.1-0.20260902003049-47411975a8cb",
    ("chaos-mesh.org_networkchaos.yaml", "chaos-mesh.org_podchaos.yaml",
     "chaos-mesh.org_stresschaos.yaml"))
GRAFANA_OPERATOR = CrdModule(
    "github.com/grafana/grafana-operator/v5", "v5.24.0",
    ("grafana.integreatly.org_grafanaalertrulegroups.yaml",
     "grafana.integreatly.org_grafanacontactpoints.yaml",
     "grafana.integreatly.org_grafanadashboards.yaml",
     "grafana.integreatly.org_grafanafolders.yaml"))

MODULES = (FLUX_SOURCE_CONTROLLER, FLUX_KUSTOMIZE_CONTROLLER, FLUX_HELM_CONTROLLER, CHAOS_MESH,
           GRAFANA_OPERATOR)

# What a cold resolve takes (module zips downloaded, nothing compiled), until one is measured
# here (progress.py).
COLD_SECONDS = 60

#: prometheus-operator's CRDs, kept in the repository (see its README for source and checksums)
REPOSITORY_CRDS = Path(__file__).resolve().parents[2] / "crds" / "thirdparty"


def crd_dir() -> Path:
    """The cache directory for this set of pins; a change of any pin is a new directory."""
    pins = json.dumps([[m.module, m.version, m.files] for m in MODULES]).encode()
    return cache_root() / f"thirdparty-crds-{hashlib.sha256(pins).hexdigest()[:12]}"


def files() -> list[Path]:
    """Where every resolved CRD is (or will be, once resolve() ran)."""
    return [crd_dir() / name for m in MODULES for name in m.files]


def is_resolved() -> bool:
    return all(path.is_file() for path in files())


def module_dir(module: CrdModule) -> Path:
    """The module's source in the Go module cache, downloaded if missing (the zip only)."""
    proc = subprocess.run(["go", "mod", "download", "-json", f"{module.module}@{module.version}"],
                          cwd=cache_root(), capture_output=True, text=True)
    found = json.loads(proc.stdout) if proc.stdout.strip() else {}
    if proc.returncode != 0 or "Dir" not in found:
        raise RuntimeError(f"go mod download {module.module}@{module.version} failed: "
                           f"{found.get('Error') or proc.stderr.strip()}")
    return Path(found["Dir"])


def resolve(log=sys.stderr) -> Path:
    """Copy every pinned CRD into crd_dir() unless it is there; return crd_dir()."""
    if shutil.which("go") is None:
        raise RuntimeError("Go is not installed: the third-party CRDs come from Go modules")
    target = crd_dir()

    def copy_missing() -> None:
        for module in MODULES:
            if all((target / name).is_file() for name in module.files):
                continue
            source = module_dir(module) / BASES
            for name in module.files:
                partial = target / f"{name}.partial"
                shutil.copyfile(source / name, partial)
                partial.rename(target / name)

    cache_root().mkdir(parents=True, exist_ok=True)
    build_once(target, is_resolved, copy_missing,
               f"the third-party CRDs from their Go modules into {target}", log)
    return target


def all_files(log=sys.stderr) -> list[Path]:
    """Every third-party CRD the tests install: the repository's and the resolved ones."""
    resolve(log)
    return sorted(REPOSITORY_CRDS.glob("*.yaml")) + files()


def resolve_step(progress: Progress) -> Path:
    """resolve() as a step of `progress` (`make thirdparty-crds`)."""
    return progress.build_step("thirdparty-crds", "third-party CRDs (Flux, Chaos Mesh, grafana-operator) "
                               "from their Go modules", COLD_SECONDS, is_resolved, resolve)


if __name__ == "__main__":
    sys.exit(run_steps(resolve_step))

"""Build a checker of kind cluster configs from kind's own module (Go module proxy).

There is no Docker engine here, so `kind create cluster` stops at its provider check before it
reads a config. The checker is a small command compiled inside a copy of kind's module (only
code under kind's `pkg/` may import its `pkg/internal` config loader and validator) and runs
exactly what `kind create cluster` runs on a config: strict parsing, conversion, defaults,
validation. Cached like the other Go builds; the command is templates/kind/check.go.j2.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

from pimlab.cluster.build import build_once, go
from pimlab.cluster.layout import cache_root
from pimlab_operator.render import render_text

MODULE, VERSION = "sigs.k8s.io/kind", "v0.30.0"


def checker() -> Path:
    return cache_root() / f"kind-{VERSION}" / "bin" / "pimlab-kind-check"


def build(log=sys.stderr) -> Path:
    """Compile the checker if it is missing; return its path."""
    target = checker()
    build_once(target.parent.parent, target.is_file, lambda: _build(target, log),
               f"the kind config checker from {MODULE}@{VERSION}", log)
    return target


def _build(target: Path, log) -> None:
    work = target.parent.parent / "work"
    out = subprocess.run(["go", "mod", "download", "-json", f"{MODULE}@{VERSION}"],
                         cwd=target.parent.parent, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"go mod download {MODULE}@{VERSION} failed: {out.stderr or out.stdout}")
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(json.loads(out.stdout)["Dir"], work)
    for root, dirs, files in os.walk(work):  # the module cache is read-only
        for name in dirs + files:
            path = Path(root) / name
            path.chmod(path.stat().st_mode | stat.S_IWUSR)
    command = work / "pkg" / "pimlabcheck"
    command.mkdir()
    (command / "main.go").write_text(render_text("kind/check.go.j2", version=VERSION))
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial")
    go(["build", "-mod=mod", "-trimpath", "-ldflags=-s -w", "-o", str(partial), "./pkg/pimlabcheck"], work, log)
    partial.rename(target)


def check(paths: list[Path]) -> subprocess.CompletedProcess[str]:
    """Run the checker on `paths` (exit 0 when every config is valid for kind)."""
    return subprocess.run([str(build()), *map(str, paths)], capture_output=True, text=True)


if __name__ == "__main__":
    print(build())

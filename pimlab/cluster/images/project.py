"""The project's image: the repository's one Dockerfile, `podman build --from=<base>` (the
Dockerfile's first FROM is replaced by the mmdebstrap base), pip reaching the package index
through the host's own pip configuration, handed in at build time as build secrets."""

from __future__ import annotations

import fnmatch
import hashlib
import os
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

from pimlab.cluster.images.base import build as build_base
from pimlab.cluster.images.builder import ROOT, Built, cached, images_dir, podman, save, sha256, ulimit_args


def _project_version() -> str:
    try:
        return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    except (OSError, KeyError, ValueError):
        return "0.1.0"


VERSION = _project_version()  # pyproject.toml's
IMAGE = f"localhost/pimlab/lab:{VERSION}"


def ignored(rel: str, patterns: list[str]) -> bool:
    parts = rel.split("/")
    for pat in patterns:
        if pat.startswith("**/"):
            if any(fnmatch.fnmatch(part, pat[3:]) for part in parts):
                return True
        elif fnmatch.fnmatch(rel, pat) or fnmatch.fnmatch(parts[0], pat):
            return True
    return False


def dockerignore(context: Path) -> list[str]:
    path = context / ".dockerignore"
    if not path.is_file():
        return []
    return [line.strip().rstrip("/") for line in path.read_text().splitlines()
            if line.strip() and not line.startswith("#")]


def copy_sources(dockerfile: Path) -> list[str]:
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
    patterns = dockerignore(context)
    h = hashlib.sha256()
    for part in ("project/1", base_ref, dockerfile.read_text()):
        h.update(sha256(part).encode())
    for src in copy_sources(dockerfile):
        top = context / src
        files = [top] if top.is_file() else sorted(p for p in top.rglob("*") if p.is_file())
        for f in files:
            rel = f.relative_to(context).as_posix()
            if ignored(rel, patterns):
                continue
            h.update(sha256(rel, oct(f.stat().st_mode & 0o111), f.read_bytes()).encode())
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


def build(log=sys.stderr, context: Path = ROOT, ref: str = IMAGE) -> Built:
    """The repository's Dockerfile, built by podman on the mmdebstrap base."""
    dockerfile = context / "Dockerfile"
    base_ref, _ = build_base(dockerfile, log)
    inputs = project_inputs(context, dockerfile, base_ref)
    if found := cached(ref, inputs):
        return found
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
    built = save(ref, inputs, started, log, {"base": base_ref})
    # Replaced images, now untagged and childless, go; the intermediate images the new build
    # shares with them stay (they have children): the layer cache of the next build.
    podman(["image", "prune", "-f"], log, capture=True)
    return built

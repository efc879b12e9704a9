"""Mermaid diagrams: parse them without a browser, render them with one.

Both tools come from npm at pinned versions, installed once into `~/.cache/pimlab` (the project's
cache, see pimlab.cluster.layout.cache_root) with the machine's npm and its configured registry:
- parsing: `mermaid` itself, run by node with jsdom as its DOM (`mermaid_parse.mjs`); about 2 s
  for every diagram of the docs, so `make test` can afford it;
- rendering: `@mermaid-js/mermaid-cli` (mmdc), which drives a headless browser through
  puppeteer. Puppeteer's own browser download is skipped (nothing outside the registries can be
  fetched); it drives Debian's `chromium` instead, which `make diagrams` installs with apt.

Mermaid 11 is the newest major that runs on the Node.js 18 and 20 of Debian bookworm and the
machines here (mermaid 12 needs node 22.12).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from pimlab.cluster.layout import cache_root

PARSER_PACKAGES = ("mermaid@11.17.2", "jsdom@25.0.1")
RENDERER_PACKAGES = ("@mermaid-js/mermaid-cli@11.12.0", "puppeteer@23.11.1")
PARSE_SCRIPT = Path(__file__).with_name("mermaid_parse.mjs")
CHROMIUM = "/usr/bin/chromium"
#: the comment `render` appends to an SVG: the sha256 of the source it was drawn from
SOURCE_MARK = "<!-- mermaid source sha256: {} -->"


class ToolError(RuntimeError):
    """A tool the diagrams need is missing or failed to install."""


@dataclass(frozen=True)
class Parsed:
    ok: bool
    detail: str  # the diagram type, or the parser's error


def _install(packages: tuple[str, ...], env: dict[str, str] | None = None) -> Path:
    """`npm install` the packages into a cache directory named after them, once."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        raise ToolError("Node.js and npm are needed for the Mermaid tools "
                        "(Debian: apt-get install nodejs npm; `make deps` does it)")
    name = "-".join(p.replace("@mermaid-js/", "").replace("@", "-") for p in packages)
    target = cache_root() / f"node-{name}"
    done = target / ".installed"
    if not done.is_file():
        target.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run(
            ["npm", "install", "--no-package-lock", "--no-audit", "--no-fund", "--loglevel=error",
             *packages], cwd=target, capture_output=True, text=True,
            env=dict(os.environ, **(env or {})))
        if proc.returncode != 0:
            raise ToolError(f"npm install {' '.join(packages)} failed in {target}:\n"
                            f"{proc.stderr.strip()[-2000:]}")
        done.write_text(" ".join(packages) + "\n")
    return target


def parse(diagrams: dict[str, str]) -> dict[str, Parsed]:
    """Parse each named diagram text with mermaid.parse; no browser."""
    if not diagrams:
        return {}
    tools = _install(PARSER_PACKAGES)
    # node resolves `import 'mermaid'` from the script's directory: run a copy beside node_modules
    script = tools / PARSE_SCRIPT.name
    if not script.is_file() or script.read_bytes() != PARSE_SCRIPT.read_bytes():
        shutil.copyfile(PARSE_SCRIPT, script)
    payload = json.dumps([{"id": k, "text": v} for k, v in diagrams.items()])
    proc = subprocess.run(["node", str(script)], input=payload, capture_output=True, text=True,
                          cwd=tools, timeout=120)
    if proc.returncode != 0:
        raise ToolError(f"the Mermaid parser failed: {proc.stderr.strip()[-2000:]}")
    return {r["id"]: Parsed(r["ok"], r.get("type") or r.get("error", ""))
            for r in json.loads(proc.stdout)}


def source_hash(source: Path) -> str:
    return hashlib.sha256(source.read_bytes()).hexdigest()


def rendered_from(svg: Path, source: Path) -> bool:
    """Whether `svg` was rendered from `source` as it is now."""
    return svg.is_file() and SOURCE_MARK.format(source_hash(source)) in svg.read_text()


def render(source: Path, svg: Path) -> None:
    """Draw `source` (.mmd) into `svg` with mmdc and Debian's chromium, marked with its hash."""
    if not Path(CHROMIUM).is_file():
        raise ToolError(f"{CHROMIUM} is missing: mmdc needs a browser "
                        "(Debian: apt-get install chromium; `make diagrams` does it)")
    tools = _install(RENDERER_PACKAGES, env={"PUPPETEER_SKIP_DOWNLOAD": "1"})
    config = tools / "puppeteer.json"
    # --no-sandbox: chromium refuses to start its sandbox as root, which builds here run as
    config.write_text(json.dumps({"executablePath": CHROMIUM,
                                  "args": ["--no-sandbox", "--disable-gpu"]}))
    proc = subprocess.run([str(tools / "node_modules" / ".bin" / "mmdc"), "--quiet",
                           "--puppeteerConfigFile", str(config), "--input", str(source),
                           "--output", str(svg), "--backgroundColor", "white"],
                          capture_output=True, text=True, timeout=180)
    if proc.returncode != 0:
        raise ToolError(f"mmdc failed on {source}: {proc.stderr.strip()[-2000:]}")
    with svg.open("a") as out:
        out.write("\n" + SOURCE_MARK.format(source_hash(source)) + "\n")

"""`pimlab docs-validate`: the docs name only what exists, and their diagrams parse.

Checked in every Markdown file of the repository:
- every repository path in inline code (a word whose first segment is a top-level entry of the
  repository, such as `pimlab/cluster/build.py` or `samples/tour/`) exists; `*` globs match;
- every `make <target>` in code names a target of the Makefile;
- every relative link resolves to a file, and its `#anchor` to a heading there;
- the generated CRD reference (docs/reference/, `make docs`) is what the models render;
- every Mermaid diagram (fenced ```mermaid blocks and the docs/diagrams/*.mmd sources) parses,
  and each source's SVG was rendered from it as it is now (`make diagrams`).
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from pimlab.docs import mermaid
from pimlab_operator import docgen

ROOT = Path(__file__).resolve().parents[2]
DIAGRAMS = Path("docs") / "diagrams"
SKIPPED_DIRS = {".git", ".venv", ".lab", "node_modules", "__pycache__", ".pytest_cache"}

FENCE = re.compile(r"^(```+|~~~+)\s*([\w-]*)[^\n]*\n(.*?)^\1\s*$", re.M | re.S)
INLINE_CODE = re.compile(r"(`+)(.+?)\1", re.S)
LINK = re.compile(r"(?<!!)\[(?:[^\]\[]|\[[^\]]*\])*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)|"
                  r"!\[[^\]]*\]\(([^)\s]+)\)")
MAKE = re.compile(r"(?:^|[\s;&|(`$])make\s+(?:(?:-\S+|[A-Z_]+=\S*)\s+)*([a-z][a-z0-9-]*)")
TARGET = re.compile(r"^([a-z][a-z0-9-]*)\s*:(?!=)", re.M)
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.M)
# A path word ends before punctuation that closes a sentence or a parenthesis.
PATH_WORD = re.compile(r"^[(\"']*(.+?)(?:'s)?[)\"',;:.]*$")


@dataclass(frozen=True)
class Problem:
    where: str  # file:line
    what: str

    def __str__(self) -> str:
        return f"{self.where}: {self.what}"


def markdown_files(root: Path = ROOT) -> list[Path]:
    return sorted(p for p in root.rglob("*.md")
                  if not SKIPPED_DIRS.intersection(p.relative_to(root).parts))


def makefile_targets(root: Path = ROOT) -> set[str]:
    return set(TARGET.findall((root / "Makefile").read_text()))


def top_level_entries(root: Path = ROOT) -> set[str]:
    return {p.name for p in root.iterdir() if p.name not in SKIPPED_DIRS}


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"`|\*\*|__|\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(text: str) -> set[str]:
    found: set[str] = set()
    seen: dict[str, int] = {}
    for heading in HEADING.findall(_without_fences(text)):
        base = slug(heading)
        count = seen.get(base, 0)
        found.add(base if count == 0 else f"{base}-{count}")
        seen[base] = count + 1
    return found


def _without_fences(text: str) -> str:
    """The text with every fenced block blanked, line numbers kept."""
    return FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)


def _line(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def _path_problem(word: str, root: Path, entries: set[str]) -> str | None:
    match = PATH_WORD.match(word)
    if not match:
        return None
    path = re.sub(r":\d+(-\d+)?$", "", match.group(1))  # file.py:12
    first = path.split("/", 1)[0]
    if first not in entries or not ("/" in path or path == first):
        return None
    if any(c in path for c in "{}<>$[]|=") or "..." in path:
        return None  # a pattern or placeholder, not a path
    if "*" in path:
        return None if any(root.glob(path.rstrip("/"))) else f"no file matches `{path}`"
    return None if (root / path).exists() else f"`{path}` does not exist"


def check_file(md: Path, root: Path, entries: set[str], targets: set[str]) -> list[Problem]:
    text = md.read_text()
    name = md.relative_to(root).as_posix()
    problems: list[Problem] = []
    prose = _without_fences(text)

    for code in INLINE_CODE.finditer(prose):
        where = f"{name}:{_line(prose, code.start())}"
        for word in code.group(2).split():
            problem = _path_problem(word, root, entries)
            if problem:
                problems.append(Problem(where, problem))
        problems += _make_problems(code.group(2), where, targets)
    for block in FENCE.finditer(text):
        for offset, line in enumerate(block.group(3).splitlines()):
            problems += _make_problems(line, f"{name}:{_line(text, block.start(3)) + offset}",
                                       targets)

    no_code = INLINE_CODE.sub(lambda m: " " * len(m.group(0)), prose)
    for link in LINK.finditer(no_code):
        target = link.group(1) or link.group(2)
        problem = _link_problem(md, target, root)
        if problem:
            problems.append(Problem(f"{name}:{_line(no_code, link.start())}", problem))
    return problems


def _make_problems(code: str, where: str, targets: set[str]) -> list[Problem]:
    return [Problem(where, f"`make {t}`: no such target in the Makefile")
            for t in MAKE.findall(code) if t not in targets]


def _link_problem(md: Path, target: str, root: Path) -> str | None:
    if re.match(r"^[a-z][a-z0-9+.-]*:", target):
        return None  # https:, mailto:
    path, _, anchor = target.partition("#")
    linked = (md.parent / path).resolve() if path else md
    if not linked.exists():
        return f"link to `{target}`: no such file"
    if root.resolve() not in linked.parents and linked != root.resolve():
        return f"link to `{target}` leaves the repository"
    if anchor and linked.suffix == ".md" and anchor not in anchors(linked.read_text()):
        return f"link to `{target}`: no heading with that anchor"
    return None


def crd_reference_problems(root: Path = ROOT) -> list[Problem]:
    stale = docgen.stale_files(root / "docs" / "reference")
    return [Problem(f"docs/reference/{f}", "stale: run `make docs`") for f in stale]


def mermaid_sources(root: Path = ROOT) -> dict[str, str]:
    """Every Mermaid diagram: `file:line` of a fenced block, or a .mmd path -> its text."""
    found: dict[str, str] = {}
    for md in markdown_files(root):
        text = md.read_text()
        for block in FENCE.finditer(text):
            if block.group(2) == "mermaid":
                found[f"{md.relative_to(root).as_posix()}:{_line(text, block.start())}"] = \
                    block.group(3)
    for source in sorted((root / DIAGRAMS).glob("*.mmd")):
        found[source.relative_to(root).as_posix()] = source.read_text()
    return found


def mermaid_problems(root: Path = ROOT) -> list[Problem]:
    problems = [Problem(where, f"does not parse: {parsed.detail}")
                for where, parsed in mermaid.parse(mermaid_sources(root)).items()
                if not parsed.ok]
    for source in sorted((root / DIAGRAMS).glob("*.mmd")):
        if not mermaid.rendered_from(source.with_suffix(".svg"), source):
            problems.append(Problem(source.relative_to(root).as_posix(),
                                    "its .svg is missing or older than it: run `make diagrams`"))
    return problems


def validate(root: Path = ROOT) -> list[Problem]:
    entries, targets = top_level_entries(root), makefile_targets(root)
    problems = [p for md in markdown_files(root) for p in check_file(md, root, entries, targets)]
    return problems + crd_reference_problems(root) + mermaid_problems(root)


def render_diagrams(root: Path = ROOT, log=sys.stdout) -> list[Path]:
    """Render every docs/diagrams/*.mmd whose SVG is not drawn from it as it is now."""
    drawn = []
    for source in sorted((root / DIAGRAMS).glob("*.mmd")):
        svg = source.with_suffix(".svg")
        if mermaid.rendered_from(svg, source):
            continue
        mermaid.render(source, svg)
        print(f"rendered {svg.relative_to(root)}", file=log, flush=True)
        drawn.append(svg)
    return drawn


def _validate_command(args: argparse.Namespace) -> int:
    problems = validate(Path(args.root))
    for problem in problems:
        print(problem)
    print(f"docs-validate: {len(problems)} problem(s) in {len(markdown_files(Path(args.root)))} "
          "Markdown files")
    return 1 if problems else 0


def _diagrams_command(args: argparse.Namespace) -> int:
    drawn = render_diagrams(Path(args.root))
    print(f"diagrams: {len(drawn)} rendered, the others current")
    return 0


def add_commands(subparsers) -> None:
    check = subparsers.add_parser("docs-validate", help="check the docs' paths, make targets, "
                                  "links, CRD reference and Mermaid diagrams")
    check.add_argument("--root", default=str(ROOT), help="the repository's root")
    check.set_defaults(func=_validate_command)
    draw = subparsers.add_parser("diagrams", help="render docs/diagrams/*.mmd into SVGs")
    draw.add_argument("--root", default=str(ROOT), help="the repository's root")
    draw.set_defaults(func=_diagrams_command)

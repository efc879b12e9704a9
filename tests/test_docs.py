"""docs/reference/ is what `pimlab docs` generates from the models, and shows what the CRDs hold;
`pimlab docs-validate` (`make docs-validate`) finds nothing wrong in the docs, and finds what is."""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import pytest

from pimlab.cli import build_parser
from pimlab.docs import check
from pimlab_operator import crdgen, docgen
from pimlab_operator.kinds import KINDS

ROOT = Path(__file__).resolve().parent.parent


def test_committed_reference_is_fresh():
    stale = docgen.stale_files(ROOT / "docs" / "reference")
    assert not stale, f"docs/reference is stale, run `make docs` (or `pimlab docs`): {stale}"


def test_reference_lists_every_spec_field_and_cel_rule_of_every_crd():
    text = docgen.render()
    for kind in KINDS:
        root = crdgen.crd(kind.model)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        assert f"\n## {kind.name}\n" in text
        for path in _leaf_paths(root["properties"]["spec"], "spec"):
            assert f"| `{path}` |" in text, path
        for rule in _messages(root):
            assert rule.replace("|", "\\|") in text, rule


def test_nested_field_row_has_type_default_bounds():
    text = docgen.render()
    row = next(line for line in text.splitlines() if line.startswith("| `spec.failover.unhealthyAfterSeconds` |"))
    cells = [cell.strip() for cell in row.strip("|").split(" | ")]
    assert cells[1] == "integer" and cells[2].strip("`").isdigit() and "≥" in cells[3], cells


def test_cli_check_reports_stale(tmp_path):
    from pimlab_operator.cli import add_commands

    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["docs", "--out-dir", str(tmp_path)])
    assert args.func(args) == 0
    check = parser.parse_args(["docs", "--out-dir", str(tmp_path), "--check"])
    assert check.func(check) == 0
    (tmp_path / docgen.FILE_NAME).write_text("stale\n")
    assert check.func(check) == 1


def _leaf_paths(node, path):
    yield path
    for name, child in node.get("properties", {}).items():
        yield from _leaf_paths(child, f"{path}.{name}")
    if node.get("type") == "array":
        for name, child in node.get("items", {}).get("properties", {}).items():
            yield from _leaf_paths(child, f"{path}[].{name}")


def _messages(node):
    for rule in node.get("x-kubernetes-validations", ()):
        yield rule.get("message") or rule["messageExpression"]
    for child in node.get("properties", {}).values():
        yield from _messages(child)
    if "items" in node:
        yield from _messages(node["items"])


def test_docs_validate_finds_nothing_wrong_in_the_repository():
    problems = check.validate(ROOT)
    assert not problems, "\n".join(map(str, problems))


def test_docs_validate_names_each_kind_of_mistake(tmp_path):
    (tmp_path / "Makefile").write_text("lab: venv ## bring it up\n\ttrue\nvenv:\n\ttrue\n")
    (tmp_path / "pimlab").mkdir()
    (tmp_path / "pimlab" / "real.py").write_text("")
    (tmp_path / "docs" / "diagrams").mkdir(parents=True)
    (tmp_path / "docs" / "diagrams" / "flow.mmd").write_text("flowchart LR\n  A --> B\n")
    (tmp_path / "docs" / "other.md").write_text("# Other\n\n## Where it runs\n")
    (tmp_path / "README.md").write_text(
        "# Lab\n\nRun `make lab`, then `make lab-up`; see `pimlab/real.py` and `pimlab/gone.py`.\n"
        "Links: [ok](docs/other.md#where-it-runs), [bad anchor](docs/other.md#nowhere),"
        " [missing](docs/none.md), [web](https://example.org/x), [tour](#lab).\n\n"
        "```sh\nmake lab && make nothing-here\n```\n\n"
        "```mermaid\nflowchart LR\n  A --> B -->\n```\n\n"
        "```mermaid\nsequenceDiagram\n  A->>B: hello\n```\n")
    found = {str(p) for p in check.validate(tmp_path)}
    expected = {
        "README.md:3: `make lab-up`: no such target in the Makefile",
        "README.md:3: `pimlab/gone.py` does not exist",
        "README.md:4: link to `docs/other.md#nowhere`: no heading with that anchor",
        "README.md:4: link to `docs/none.md`: no such file",
        "README.md:7: `make nothing-here`: no such target in the Makefile",
        "docs/reference/crds.md: stale: run `make docs`",
        "docs/diagrams/flow.mmd: its .svg is missing or older than it: run `make diagrams`",
    }
    assert expected <= found, found
    unparsed = [p for p in found if p.startswith("README.md:10: does not parse")]
    assert len(unparsed) == 1 and "Parse error" in unparsed[0], found
    assert len(found) == len(expected) + 1, found


def test_every_readme_and_tour_command_names_a_cli_command_and_files_that_exist():
    """The README's and the tour's shell commands: each `pimlab` invocation is one the CLI accepts,
    each file `kubectl apply -f` reads is in the repository (docs-validate checks the make targets)."""
    parser = build_parser()
    seen = {"pimlab": 0, "apply": 0}
    for doc in (ROOT / "README.md", ROOT / "docs" / "tour.md"):
        for block in re.findall(r"```sh\n(.*?)```", doc.read_text(), re.S):
            for line in block.replace("\\\n", " ").splitlines():
                for words in _commands(line.split(" #", 1)[0]):
                    command = " ".join(words)
                    if words and words[0].endswith("pimlab") and words[0] != "pimlab.cluster":
                        seen["pimlab"] += 1
                        try:
                            parser.parse_args(words[1:])
                        except SystemExit:
                            pytest.fail(f"{doc.name}: `{command}` is not a pimlab command")
                    if words[:2] == ["kubectl", "apply"] and "-f" in words:
                        seen["apply"] += 1
                        path = words[words.index("-f") + 1]
                        assert (ROOT / path).exists(), f"{doc.name}: `{command}` reads a missing {path}"
    assert seen["pimlab"] >= 2 and seen["apply"] >= 2, seen


def _commands(line: str) -> list[list[str]]:
    """A shell line's simple commands, split at `&&`, `;`, `|`, `&` and `$( )`, quotes kept."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    commands, words = [], []
    for token in lexer:
        if token and set(token) <= set("();<>|&"):
            commands.append(words)
            words = []
        else:
            words.append(token)
    return [c for c in commands + [words] if c]

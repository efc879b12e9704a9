"""docs/reference/ is what `pimlab docs` generates from the models, and shows what the CRDs hold."""

from __future__ import annotations

import argparse
from pathlib import Path

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

"""The runbooks are followable: the ones the seeds name exist, every alert links to one, every
`pimlab` command in them is one the CLI accepts, and every link between them resolves."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

from pimlab.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
RUNBOOKS = ROOT / "docs" / "runbooks"
NAMED = ("05_encounter-write", "07_temporal-history-repair", "11_audit-log-degradation",
         "18_projection-backlog", "20_event-outbox-dlq", "22_financial-dashboard-validation",
         "30_sql-failover", "32_chaos-controller", "40_claim-chaos-drill")


def shell_lines(text: str) -> list[str]:
    """The commands of the ```sh blocks, continuation lines joined."""
    lines = []
    for block in re.findall(r"```sh\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #", 1)[0].strip()
            if line:
                lines.append(line)
    return lines


SECTIONS = ("Symptoms", "Diagnose", "Repair", "Verify", "Where this runs")
DRILL_SECTIONS = ("Before", "Run", "Watch", "Passed when", "Where this runs")  # 40 is a planned drill


@pytest.mark.parametrize("name", NAMED)
def test_each_named_runbook_has_its_sections(name):
    text = (RUNBOOKS / f"{name}.md").read_text()
    for section in DRILL_SECTIONS if name.startswith("40_") else SECTIONS:
        assert section in text, f"{name}.md has no '{section}'"


def test_every_alert_links_to_a_runbook_that_exists():
    slos = [d for p in sorted((ROOT / "samples").glob("*.yaml")) for d in yaml.safe_load_all(p.read_text())
            if d and d["kind"] == "SLO"]
    assert slos
    for slo in slos:
        url = slo["spec"]["alerting"]["runbookUrl"]
        target = RUNBOOKS / url.rsplit("/", 1)[1]
        assert target.is_file(), f"SLO {slo['metadata']['name']} links to {url}, which is not in docs/runbooks/"


def test_every_pimlab_command_in_a_runbook_is_accepted_by_the_cli():
    parser = build_parser()
    seen = 0
    for path in sorted(RUNBOOKS.glob("*.md")):
        for line in shell_lines(path.read_text()):
            words = shlex.split(line.replace("<", "x").replace(">", "x"))
            if "--" in words:
                words = words[words.index("--") + 1:]
            if words[:1] != ["pimlab"]:
                continue
            seen += 1
            try:
                parser.parse_args(words[1:])
            except SystemExit:
                pytest.fail(f"{path.name}: `{line}` is not a pimlab command")
    assert seen >= 8


def test_links_between_runbooks_and_docs_resolve():
    for path in sorted(RUNBOOKS.glob("*.md")):
        for target in re.findall(r"\]\(([^)#]+\.md)\)", path.read_text()):
            if "://" not in target:
                assert (path.parent / target).is_file(), f"{path.name} links to missing {target}"

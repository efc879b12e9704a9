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


#: What a command may be marked as needing instead of running on the local lab (README.md).
NEEDS = ("real node", "make gitops")
_MARK = re.compile(r"#.*\[needs: ([^\]]+)\]\s*$")


def commands(text: str) -> list[tuple[str, str | None]]:
    """The commands of the ```sh blocks, each with what its marker says it needs (None: it runs
    on the local lab). Continuation lines are joined; a `for`/`while` loop, heredocs included,
    is one command up to its `done`, marked on its first line."""
    found = []
    for block in re.findall(r"```sh\n(.*?)```", text, re.S):
        lines = block.replace("\\\n", " ").splitlines()
        while lines:
            line = lines.pop(0)
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            mark = _MARK.search(line)
            command = [line]
            if re.match(r"\s*(for|while)\b", line):
                while lines and command[-1].strip() != "done":
                    command.append(lines.pop(0))
            found.append(("\n".join(command), mark.group(1) if mark else None))
    return found


def shell_lines(text: str) -> list[str]:
    """The commands of the ```sh blocks without their comments, one line each (a loop's lines
    one by one), for the CLI check."""
    return [line.split(" #", 1)[0].strip() for command, _ in commands(text) for line in command.splitlines()
            if line.split(" #", 1)[0].strip()]


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


def test_every_marker_says_what_the_command_needs():
    """A command that cannot run on the local lab says why (docs/runbooks/README.md); the rest
    are run by tests/cluster/test_runbook_commands.py."""
    readme = (RUNBOOKS / "README.md").read_text()
    marked = [need for path in sorted(RUNBOOKS.glob("*.md")) for _, need in commands(path.read_text()) if need]
    assert marked and set(marked) <= set(NEEDS), set(marked) - set(NEEDS)
    for need in NEEDS:
        assert f"`[needs: {need}]`" in readme
    for path in sorted(RUNBOOKS.glob("*.md")):
        for line in path.read_text().splitlines():
            if "[needs:" in line and not line.startswith("|"):
                assert _MARK.search(line), f"{path.name}: a marker must end the line's comment: {line}"


def test_links_between_runbooks_and_docs_resolve():
    for path in sorted(RUNBOOKS.glob("*.md")):
        for target in re.findall(r"\]\(([^)#]+\.md)\)", path.read_text()):
            if "://" not in target:
                assert (path.parent / target).is_file(), f"{path.name} links to missing {target}"

"""Grafana cannot run here: its dashboard JSON is checked for structure, and every query in
it is parsed by Prometheus's own promtool (wrapped as recording rules)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

DASHBOARDS = sorted((Path(__file__).resolve().parents[1] / "dashboards").glob("*.json"))
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$service": ".*",
                     "$shard": ".*", "$persona": ".*"}


def queries(dashboard: dict) -> list[str]:
    """Every PromQL query: panel targets and annotation queries."""
    return ([t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
            + [a["expr"] for a in (dashboard.get("annotations") or {}).get("list", []) if a.get("expr")])


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_structure(path):
    dashboard = json.loads(path.read_text())
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 36
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    for expr in queries(dashboard):
        for name in ("service", "shard", "persona"):
            if f"${name}" in expr:
                assert name in variables, f"${name} used but not defined"
        assert expr.count("(") == expr.count(")")


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_every_dashboard_query_parses_with_promtool(path, tmp_path):
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (make deps installs Debian's prometheus)")
    rules = []
    for index, expr in enumerate(queries(json.loads(path.read_text()))):
        for variable, value in sorted(GRAFANA_VARIABLES.items(), key=lambda kv: -len(kv[0])):
            expr = expr.replace(variable, value)
        rules.append({"record": f"dashboard:query_{index}", "expr": expr})
    assert rules
    rule_file = tmp_path / "rules.yaml"
    rule_file.write_text(yaml.safe_dump({"groups": [{"name": path.stem, "rules": rules}]}))
    proc = subprocess.run([promtool, "check", "rules", str(rule_file)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(rules)} rules found" in proc.stdout

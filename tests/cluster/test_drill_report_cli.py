"""`pimlab report drill` against a real apiserver: the Drill, its SLOs and its PersonaLoad read
through the project's client, the report written with the Prometheus figures explained as
missing (the Prometheus named is a closed port). Needs the Drill CRD (crds/drills.pim-sre.lab.yaml).

    PYTHONPATH=$PWD:$PWD/operator .venv/bin/python -m pytest -q tests/cluster/test_drill_report_cli.py
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.live_prometheus import free_port
from tests.test_drill_report import drill_object

ROOT = Path(__file__).resolve().parents[2]


def sample(path: str, kind: str, name: str) -> dict:
    return next(d for d in yaml.safe_load_all((ROOT / "samples" / path).read_text())
                if d and d["kind"] == kind and d["metadata"]["name"] == name)


def test_report_reads_the_drill_from_the_apiserver(crds_installed, namespace, tmp_path):
    if not (ROOT / "crds" / "drills.pim-sre.lab.yaml").exists():
        pytest.skip("the Drill CRD is not in crds/ on this branch")
    cluster = crds_installed
    slo = sample("30-slos.yaml", "SLO", "encounter-booking-availability")
    slo["metadata"]["namespace"] = namespace
    drill = sample("60-drills.yaml", "Drill", "primary-loss-under-load")
    drill["metadata"]["namespace"] = namespace
    cluster.apply([slo, drill])
    status = {"apiVersion": drill["apiVersion"], "kind": "Drill",
              "metadata": {"name": drill["metadata"]["name"], "namespace": namespace},
              "status": drill_object()["status"]}
    cluster.apply(status, "--subresource=status")

    closed = f"http://127.0.0.1:{free_port()}"
    proc = subprocess.run([sys.executable, "-m", "pimlab.cli", "report", "drill", drill["metadata"]["name"],
                           "-n", namespace, "--out", str(tmp_path), "--prometheus", closed],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert {"report.html", "report.md", "ledger.png", "failover-timeline.png"} <= {p.name for p in tmp_path.iterdir()}
    markdown = (tmp_path / "report.md").read_text()
    assert f"# Drill {namespace}/primary-loss-under-load:" in markdown
    assert markdown.count(f"> **Figure missing:** Prometheus at {closed} could not be read") == 3
    # the SLO object was read: its own SLI is the query under the budget figure
    assert slo["spec"]["sli"]["ratio"]["total"].replace("{{window}}", "1m") in markdown
    assert "figure missing: Latency and throughput at the gateway" in proc.stderr

    missing = subprocess.run([sys.executable, "-m", "pimlab.cli", "report", "drill", "no-such-drill",
                              "-n", namespace, "--out", str(tmp_path / "none")],
                             capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert missing.returncode == 1 and f"no Drill {namespace}/no-such-drill" in missing.stderr

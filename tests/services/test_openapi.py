"""The checked-in OpenAPI document is current, served, and holds against schemathesis."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
import sys
from pathlib import Path

from api_services.openapi import TARGET, render


def test_checked_in_openapi_is_current():
    assert TARGET.read_text() == render(), "stale: run `python -m api_services.openapi`"


def test_served_document_matches_checked_in(server):
    assert server.client().get("/openapi.json").json() == json.loads(TARGET.read_text())


CHECKS = "not_a_server_error,status_code_conformance,response_schema_conformance,content_type_conformance"


def _schemathesis(server, persona: str, user: str, tmp: Path) -> subprocess.Popen:
    """One bounded schemathesis run as `persona`: examples, fuzzing and stateful (OpenAPI links:
    create, then read, document and claim); no 5xx, no response off its schema, no undocumented
    status (so every 4xx it sees is documented)."""
    out = open(tmp / f"schemathesis-{persona}.txt", "w")
    exe = Path(sys.executable).with_name("schemathesis")
    return subprocess.Popen(
        [str(exe), "run", f"{server.url}/openapi.json", "--checks", CHECKS, "--max-examples", "10",
         "--phases", "examples,fuzzing,stateful", "-w", "1", "--seed", "1", "--no-color",
         "--suppress-health-check", "too_slow,filter_too_much",
         "-H", f"Authorization: Bearer {server.token(persona, user)}", "--request-timeout", "10"],
        cwd=tmp, stdout=out, stderr=subprocess.STDOUT, text=True, env={**os.environ, "SCHEMATHESIS_HOOKS": ""})


def test_schemathesis_stateful_across_all_personas_finds_no_5xx_no_schema_break_no_undocumented_status(
        server, tmp_path):
    from api_services.seed import seeded_patient_id

    personas = {"patient": seeded_patient_id(42, 0), "clinician": "prv-0001", "admin": "admin-1", "sre": "sre-1"}
    procs = {p: _schemathesis(server, p, u, tmp_path) for p, u in personas.items()}  # in parallel: bounded wall time
    deadline = time.monotonic() + 150
    for persona, proc in procs.items():
        try:
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    failed = {}
    for persona, proc in procs.items():
        text = (tmp_path / f"schemathesis-{persona}.txt").read_text()
        if proc.returncode != 0:
            failed[persona] = text[-3000:]
        assert "Stateful" in text, text[-2000:]
    assert not failed, failed
    links = (tmp_path / "schemathesis-clinician.txt").read_text()
    covered = re.search(r"API Links:\s+(\d+) covered", links)
    assert covered and int(covered.group(1)) >= 3, links[-2000:]  # booked -> read -> documented -> read

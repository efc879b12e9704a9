"""The checked-in OpenAPI document is current, served, and holds against schemathesis."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from api_services.openapi import TARGET, render


def test_checked_in_openapi_is_current():
    assert TARGET.read_text() == render(), "stale: run `python -m api_services.openapi`"


def test_served_document_matches_checked_in(server):
    assert server.client().get("/openapi.json").json() == json.loads(TARGET.read_text())


def _schemathesis(server, persona: str, user: str, tmp: Path) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("schemathesis")
    return subprocess.run(
        [str(exe), "run", f"{server.url}/openapi.json", "--checks", "not_a_server_error,response_schema_conformance",
         "--max-examples", "8", "--phases", "examples,fuzzing", "-w", "1", "--seed", "1", "--no-color",
         "-H", f"Authorization: Bearer {server.token(persona, user)}", "--request-timeout", "10"],
        cwd=tmp, capture_output=True, text=True, timeout=110, env={**os.environ, "SCHEMATHESIS_HOOKS": ""})


def test_schemathesis_finds_no_5xx_and_no_schema_violation(server, tmp_path):
    for persona, user in (("clinician", "prv-0001"), ("sre", "sre-1")):
        proc = _schemathesis(server, persona, user, tmp_path)
        assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]

"""Fault injection for SLO drills, against a real `pimlab serve`: off unless PIM_FAULTS_FILE is
set; with it, the file's faults add delay and 503 `fault_injected` on matching requests only,
counted under the request's own route in the RED metrics; a bad file is ignored; removing the
file clears the fault; health and metrics routes are never faulted."""

from __future__ import annotations

import json
import re
import time

import httpx
import pytest

from .conftest import booking, run_cli, start_server


@pytest.fixture(scope="module")
def faulty(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("faults")
    run_cli(workdir, "seed", "--patients", "5")
    faults = workdir / "faults.json"
    srv = start_server(workdir, env={"PIM_FAULTS_FILE": str(faults)})
    yield srv, faults
    srv.stop()


def _write(path, body) -> None:
    path.write_text(body if isinstance(body, str) else json.dumps(body))
    time.sleep(1.1)  # the file is stat'ed at most once a second


def _errors_counted(srv, route: str) -> float:
    text = httpx.get(srv.url + "/metrics").text
    pattern = re.compile(r'^pim_http_requests_total\{(?=[^}]*route="' + re.escape(route)
                         + r'")(?=[^}]*method="POST")(?=[^}]*status="503")[^}]*\} ([0-9.e+]+)$', re.M)
    return sum(float(v) for v in pattern.findall(text))


def test_faults_apply_to_matching_requests_only_and_clear(faulty):
    srv, path = faulty
    with srv.client("admin", "admin-1") as admin, srv.client("clinician", "clin-1") as clinician:
        resp = admin.post("/patients", json={"pseudonym": "Fault Person", "birth_year": 1980, "sex": "F"})
        assert resp.status_code == 201, resp.text
        patients = [resp.json()["patient_id"]]
        assert clinician.post("/encounters", json=booking(patients[0])).status_code == 202  # no file: no fault
        _write(path, {"faults": [{"method": "POST", "path": "/encounters", "errorRatio": 1.0},
                                 {"method": "GET", "path": "/kpis/*", "delay": "400ms"}]})
        before = _errors_counted(srv, "/encounters")
        refused = clinician.post("/encounters", json=booking(patients[0]))
        assert refused.status_code == 503 and refused.json()["code"] == "fault_injected"
        assert refused.json()["request_id"]
        assert _errors_counted(srv, "/encounters") == before + 1  # under its route, not "unmatched"
        started = time.monotonic()
        assert admin.get("/kpis/financial").status_code == 200
        assert time.monotonic() - started >= 0.4
        started = time.monotonic()
        assert admin.get(f"/patients/{patients[0]}").status_code == 200  # not matched: no delay
        assert time.monotonic() - started < 0.4
        for route in ("/healthz", "/readyz", "/metrics"):
            assert httpx.get(srv.url + route).status_code == 200
        _write(path, "{not json")
        assert clinician.post("/encounters", json=booking(patients[0])).status_code == 202  # bad file: ignored
        _write(path, {"faults": [{"path": "/encounters", "errorRatio": 1.0}]})
        assert clinician.post("/encounters", json=booking(patients[0])).status_code == 503
        path.unlink()
        time.sleep(1.1)
        assert clinician.post("/encounters", json=booking(patients[0])).status_code == 202
    assert any(line.get("message") == "fault file ignored" for line in srv.log_lines())


def test_without_the_setting_a_fault_file_changes_nothing(server, patients):
    """The session's server has no PIM_FAULTS_FILE: even a file at the pods' path is never read."""
    assert server.env.get("PIM_FAULTS_FILE") is None
    with server.client("clinician", "clin-1") as clinician:
        assert clinician.post("/encounters", json=booking(patients[1])).status_code == 202

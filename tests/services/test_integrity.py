"""`pimlab audit verify` and `pimlab replay` against tampered SQLite shards."""

from __future__ import annotations

import json
import sqlite3

import pytest

from api_services.sharding import load_map

from .conftest import run_cli


@pytest.fixture()
def lab(tmp_path):
    run_cli(tmp_path, "seed", "--patients", "12")
    return tmp_path


def shard_paths(lab) -> list[str]:
    return [s.sqlite_path for s in load_map(lab / ".lab/data/shard-map.json").shards]


def verify(lab):
    proc = run_cli(lab, "audit", "verify", check=False)
    return proc.returncode, json.loads(proc.stdout)


def test_clean_lab_verifies_and_replays(lab):
    code, report = verify(lab)
    assert code == 0 and report["ok"]
    assert all(s["events"] > 0 for s in report["shards"].values())
    replay = run_cli(lab, "replay", check=False)
    assert replay.returncode == 0 and json.loads(replay.stdout)["ok"]


def test_seed_is_deterministic(tmp_path, lab):
    other = tmp_path / "other"
    other.mkdir()
    run_cli(other, "seed", "--patients", "12")
    rows = lambda root: sorted(  # noqa: E731
        r for p in shard_paths(root) for r in sqlite3.connect(p).execute(
            "select patient_id, pseudonym, birth_year, mrn from patients"))
    assert rows(lab) == rows(other) and len(rows(lab)) == 12


@pytest.mark.parametrize("tamper,problem", [
    ("update audit_events set user_id = 'someone-else' where seq = 30", "altered"),
    ("delete from audit_events where seq = 10", "missing"),
    ("delete from audit_events where seq = (select max(seq) from audit_events)", "truncated"),
])
def test_audit_verify_detects_altered_and_deleted_rows(lab, tamper, problem):
    db = sqlite3.connect(shard_paths(lab)[0])
    db.execute(tamper)
    db.commit()
    code, report = verify(lab)
    assert code == 1 and not report["ok"]
    assert problem in {p["problem"] for p in report["shards"]["shard-00"]["problems"]}


def test_replay_reports_a_row_that_differs_from_its_events(lab):
    db = sqlite3.connect(shard_paths(lab)[1])
    enc_id = db.execute("select encounter_id from encounters limit 1").fetchone()[0]
    db.execute("update encounters set reason = 'edited behind the API' where encounter_id = ?", (enc_id,))
    db.execute("delete from claims where claim_id = (select claim_id from claims limit 1)")
    db.commit()
    proc = run_cli(lab, "replay", check=False)
    report = json.loads(proc.stdout)
    assert proc.returncode == 1
    problems = {(d["entity"], d["problem"]) for d in report["shards"]["shard-01"]["differences"]}
    assert ("encounter", "differs_from_events") in problems
    assert ("claim", "events_without_row") in problems


def test_token_cli_prints_a_dev_token(lab):
    import jwt

    token = run_cli(lab, "token", "--persona", "clinician", "--user", "prv-0001").stdout.strip()
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["sub"] == "prv-0001" and claims["persona"] == "clinician" and claims["iss"] == "pim-lab-dev"
    key = (lab / ".lab/data/dev-issuer.pem")
    assert oct(key.stat().st_mode & 0o777) == "0o600"

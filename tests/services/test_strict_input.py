"""Issue 12, item 5: strict input.

JSON bodies only (415 otherwise); no coercion of strings or booleans to numbers; dates in a
plausible range; only documented error codes; claims only for documented encounters, at most
one open claim per encounter, amounts under the configured ceiling.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from api_services import errors

from .conftest import booking

DOCS = Path(__file__).resolve().parents[2] / "docs" / "services.md"


@pytest.mark.parametrize("content_type,body", [
    ("text/plain", b'{"pseudonym": "Plain Text", "birth_year": 1980, "sex": "F"}'),
    ("application/x-www-form-urlencoded", b"pseudonym=Form&birth_year=1980&sex=F"),
    (None, b'{"pseudonym": "No Type", "birth_year": 1980, "sex": "F"}'),
])
def test_non_json_bodies_are_415(server, content_type, body):
    with server.client("admin", "admin-1") as admin:
        headers = {"content-type": content_type} if content_type else {}
        resp = admin.post("/patients", content=body, headers=headers)
    assert resp.status_code == 415, resp.text
    assert resp.json()["code"] == "unsupported_media_type" and "application/json" in resp.json()["message"]


def test_json_with_charset_and_bodyless_posts_are_fine(server):
    with server.client("admin", "admin-1") as admin:
        ok = admin.post("/patients", content=b'{"pseudonym": "Charset", "birth_year": 1980, "sex": "F"}',
                        headers={"content-type": "application/json; charset=utf-8"})
        assert ok.status_code == 201
    with server.client("sre", "sre-1") as sre:
        assert sre.post("/admin/audit/verify").status_code == 200


@pytest.mark.parametrize("value", ["100", True, 100.0, "1e3"])
def test_amounts_are_not_coerced(server, patients, value):
    with server.client("admin", "admin-1") as admin:
        resp = admin.post("/claims", json={"encounter_id": "enc-0001-" + "0" * 32, "amount_cents": value, "payer": "X"})
    assert resp.status_code == 422 and resp.json()["errors"][0]["field"] == "body.amount_cents"


@pytest.mark.parametrize("value", ["1980", True, 1980.0])
def test_birth_year_is_not_coerced(server, value):
    with server.client("admin", "admin-1") as admin:
        resp = admin.post("/patients", json={"pseudonym": "Coerced", "birth_year": value, "sex": "F"})
    assert resp.status_code == 422 and resp.json()["errors"][0]["field"] == "body.birth_year"


def _in_years(years: float) -> str:
    return (datetime.now(timezone.utc) + timedelta(days=365.25 * years)).strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.mark.parametrize("when", ["0001-01-01T00:00:00Z", "0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59Z",
                                  "1999-06-01T09:00:00Z", "__future__"])
def test_implausible_dates_are_422(server, patients, when):
    when = _in_years(3) if when == "__future__" else when
    with server.client("clinician", "prv-0001") as doc:
        resp = doc.post("/encounters", json={**booking(patients[0]), "scheduled_for": when})
    assert resp.status_code == 422, resp.text
    assert resp.json()["errors"][0]["field"] == "body.scheduled_for"
    assert "between" in resp.json()["errors"][0]["message"] or "timezone" in resp.json()["errors"][0]["message"]


def test_future_birth_year_is_422(server):
    with server.client("admin", "admin-1") as admin:
        resp = admin.post("/patients", json={"pseudonym": "Unborn", "birth_year": datetime.now().year + 1, "sex": "F"})
    assert resp.status_code == 422 and resp.json()["errors"][0]["field"] == "body.birth_year"


def _documented_codes() -> dict[str, int]:
    section = DOCS.read_text().split("## Errors", 1)[1].split("\n## ", 1)[0]
    return {m.group(2): int(m.group(1)) for m in re.finditer(r"^\| (\d{3}) \| `([a-z_]+)` \|", section, re.M)}


def test_every_error_code_is_documented_with_its_status():
    assert _documented_codes() == {code: status for code, (status, _) in errors.CODES.items()}


def test_an_undocumented_code_cannot_be_raised():
    with pytest.raises(ValueError):
        errors.Conflict("x", "made_up_code")


def test_claims_follow_the_guardrails(server, patients):
    pid = patients[3]
    with server.client("clinician", "prv-0003") as doc, server.client("admin", "admin-1") as admin:
        enc = doc.post("/encounters", json=booking(pid)).json()["tracking_id"]
        undocumented = admin.post("/claims", json={"encounter_id": enc, "amount_cents": 100, "payer": "Lab Mutual"})
        assert undocumented.status_code == 409 and undocumented.json()["code"] == "encounter_not_documented"
        assert doc.patch(f"/encounters/{enc}/notes", json={"notes": "seen"}).status_code == 200
        too_much = admin.post("/claims", json={"encounter_id": enc, "amount_cents": 5_000_001, "payer": "Lab Mutual"})
        assert too_much.status_code == 422 and too_much.json()["code"] == "amount_above_ceiling"
        assert too_much.json()["errors"][0]["field"] == "body.amount_cents"
        first = admin.post("/claims", json={"encounter_id": enc, "amount_cents": 5_000_000, "payer": "Lab Mutual"})
        assert first.status_code == 202, first.text
        second = admin.post("/claims", json={"encounter_id": enc, "amount_cents": 100, "payer": "Demo Care"})
        assert second.status_code == 409 and second.json()["code"] == "claim_already_open"
        assert first.json()["tracking_id"] in second.json()["message"]

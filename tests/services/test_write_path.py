"""The seeds' runtime sequences end to end: booking, documenting, claiming, idempotency."""

from __future__ import annotations

import json
import sqlite3
import time

from api_services.sharding import load_map, slot_of

from .conftest import booking


def shard_db(server, patient_id: str) -> sqlite3.Connection:
    smap = load_map(server.data_dir / "shard-map.json")
    shard = smap.shard_for_slot(slot_of(patient_id, smap.slot_count))
    return sqlite3.connect(shard.sqlite_path)


def test_booking_is_one_audited_transaction_on_the_patients_shard(server, patients):
    pid = patients[0]
    with server.client("patient", pid) as me:
        resp = me.post("/encounters", json=booking(pid), headers={"X-Request-Id": "req-book-1"})
    assert resp.status_code == 202
    enc_id = resp.json()["tracking_id"]
    assert resp.headers["location"] == f"/encounters/{enc_id}"
    assert int(enc_id.split("-")[1]) == slot_of(pid, 1024)
    db = shard_db(server, pid)
    assert db.execute("select patient_id, status from encounters where encounter_id=?", (enc_id,)).fetchone() == (pid, "booked")
    audit = db.execute("select user_id, request_id, persona, action, before, after, correlation_id from audit_events "
                       "where entity_id=?", (enc_id,)).fetchone()
    assert audit[:4] == (pid, resp.headers["x-request-id"], "patient", "encounter.book")
    assert audit[6] == "req-book-1"
    assert audit[4] is None and json.loads(audit[5])["encounter_id"] == enc_id
    assert db.execute("select count(*) from history where entity_id=?", (enc_id,)).fetchone() == (1,)
    assert db.execute("select event_type from outbox where entity_id=?", (enc_id,)).fetchone() == ("encounter.booked",)


def test_documenting_redacts_notes_and_keeps_before_and_after(server, patients):
    pid = patients[1]
    with server.client("clinician", "prv-0002") as doc:
        enc_id = doc.post("/encounters", json=booking(pid)).json()["tracking_id"]
        resp = doc.patch(f"/encounters/{enc_id}/notes", json={
            "notes": "Called patient at 555-123-4567, SSN 123-45-6789 on file.",
            "diagnoses": [{"code": "J06.9", "description": "Acute URI"}],
            "procedures": [{"code": "99213", "description": "Office visit"}],
            "medications": [{"name": "Ibuprofen", "dose": "400 mg"}]})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert "555-123-4567" not in body["notes"] and "123-45-6789" not in body["notes"]
    assert body["status"] == "documented" and body["version"] == 2
    assert body["diagnoses"] == [{"code": "J06.9", "description": "Acute URI"}]
    db = shard_db(server, pid)
    before, after = db.execute("select before, after from history where entity_id=? and version=2", (enc_id,)).fetchone()
    assert json.loads(before)["status"] == "booked" and json.loads(after)["status"] == "documented"
    assert "123-45-6789" not in server.log_path.read_text()


def test_bad_notes_payload_is_422_with_field_and_code(server, patients):
    with server.client("clinician", "prv-0002") as doc:
        enc_id = doc.post("/encounters", json=booking(patients[1])).json()["tracking_id"]
        resp = doc.patch(f"/encounters/{enc_id}/notes", json={"notes": "ok", "diagnoses": [{"code": "bad", "description": "x"}]})
    assert resp.status_code == 422
    body = resp.json()
    assert body["code"] == "validation_error" and body["request_id"] == resp.headers["x-request-id"]
    assert body["errors"][0]["field"] == "body.diagnoses.0.code"
    assert body["errors"][0]["code"] == "string_pattern_mismatch"


def test_unknown_reference_is_422(server, patients):
    with server.client("clinician", "prv-0002") as doc:
        resp = doc.post("/encounters", json={**booking(patients[0]), "provider_id": "prv-9999"})
    assert resp.status_code == 422
    assert resp.json()["errors"] == [{"field": "body.provider_id", "code": "unknown_reference", "message": "no such provider"}]


def test_idempotency_key_returns_first_answer_without_second_write(server, patients):
    pid = patients[2]
    with server.client("patient", pid) as me:
        first = me.post("/encounters", json=booking(pid), headers={"Idempotency-Key": "k-123"})
        again = me.post("/encounters", json=booking(pid), headers={"Idempotency-Key": "k-123"})
        other = me.post("/encounters", json=booking(pid, "different"), headers={"Idempotency-Key": "k-123"})
    assert first.status_code == again.status_code == 202
    assert again.json() == first.json() and again.headers["idempotent-replayed"] == "true"
    assert other.status_code == 409 and other.json()["code"] == "idempotency_key_reused"
    db = shard_db(server, pid)
    assert db.execute("select count(*) from encounters where encounter_id=?", (first.json()["tracking_id"],)).fetchone() == (1,)
    assert db.execute("select count(*) from audit_events where entity_id=?", (first.json()["tracking_id"],)).fetchone() == (1,)


def test_idempotent_patient_registration_lands_on_one_id(server):
    with server.client("admin", "admin-2") as admin:
        body = {"pseudonym": "Retry Person", "birth_year": 1990, "sex": "X"}
        a = admin.post("/patients", json=body, headers={"Idempotency-Key": "reg-1"})
        b = admin.post("/patients", json=body, headers={"Idempotency-Key": "reg-1"})
    assert a.status_code == b.status_code == 201 and a.json() == b.json()


def test_claim_is_accepted_and_projected_into_kpis(server, patients):
    pid = patients[3]
    with server.client("clinician", "prv-0003") as doc:
        enc_id = doc.post("/encounters", json=booking(pid)).json()["tracking_id"]
        assert doc.patch(f"/encounters/{enc_id}/notes", json={"notes": "seen"}).status_code == 200
    with server.client("admin", "admin-1") as admin:
        before = admin.get("/kpis/financial").json()["total"]
        resp = admin.post("/claims", json={"encounter_id": enc_id, "amount_cents": 12345, "payer": "Lab Mutual"})
        assert resp.status_code == 202
        claim = admin.get(f"/claims/{resp.json()['tracking_id']}").json()
        assert claim["patient_id"] == pid and claim["amount_cents"] == 12345
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            after = admin.get("/kpis/financial").json()["total"]
            if after["claims_submitted"] > before["claims_submitted"]:
                break
            time.sleep(0.1)
    assert after["claims_amount_cents"] - before["claims_amount_cents"] >= 12345
    with server.client("admin", "admin-1") as admin:
        missing = admin.post("/claims", json={"encounter_id": "enc-0001-" + "0" * 32, "amount_cents": 1, "payer": "X"})
    assert missing.status_code == 422 and missing.json()["code"] == "unknown_reference"


def test_oversized_body_is_413(server, patients):
    with server.client("clinician", "prv-0001") as doc:
        resp = doc.post("/encounters", content=b"{" + b" " * 70_000 + b"}", headers={"content-type": "application/json"})
    assert resp.status_code == 413
    assert resp.json()["code"] == "payload_too_large" and resp.json()["request_id"]


def test_oversized_body_without_a_length_is_413_when_it_outgrows_the_limit(server, patients):
    """A chunked body declares no length: the edge counts it as it arrives."""
    def chunks():
        yield b"{"
        for _ in range(70):
            yield b" " * 1000
        yield b"}"

    with server.client("clinician", "prv-0001") as doc:
        resp = doc.post("/encounters", content=chunks(), headers={"content-type": "application/json"})
    assert "content-length" not in resp.request.headers
    assert resp.status_code == 413, resp.text
    assert resp.json()["code"] == "payload_too_large" and resp.json()["request_id"]


def test_every_shard_in_metric_labels(server, patients):
    with server.client("clinician", "prv-0001") as doc:
        for pid in patients:
            doc.post("/encounters", json=booking(pid))
        text = doc.get("/metrics").text
    smap = load_map(server.data_dir / "shard-map.json")
    used = {smap.shard_for_slot(slot_of(p, 1024)).name for p in patients}
    for shard in used:
        assert f'route="/encounters",service="all",shard="{shard}",status="202"' in text

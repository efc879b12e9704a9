"""Issue 12, item 1: an Idempotency-Key is unique per caller across the whole system.

A reused key with a different body is refused (409 `idempotency_key_reused`) whatever shard the
new body routes to; the same body gets the first answer back, without a second write. Every
write endpoint: patients, encounters, notes and claims.
"""

from __future__ import annotations

import sqlite3
import uuid

import pytest

from api_services.sharding import load_map, slot_of

from .conftest import booking


def _shard(server, patient_id: str) -> str:
    smap = load_map(server.data_dir / "shard-map.json")
    return smap.shard_for_slot(slot_of(patient_id, smap.slot_count)).name


def _count(server, sql: str, *args) -> int:
    smap = load_map(server.data_dir / "shard-map.json")
    return sum(sqlite3.connect(s.sqlite_path).execute(sql, args).fetchone()[0] for s in smap.shards)


@pytest.fixture(scope="module")
def two_shards(server, patients) -> tuple[str, str]:
    """Two patients whose records live on different shards."""
    first = patients[0]
    other = next(p for p in patients[1:] if _shard(server, p) != _shard(server, first))
    return first, other


def _documented_encounter(server, pid: str) -> str:
    with server.client("clinician", "prv-0004") as doc:
        enc = doc.post("/encounters", json=booking(pid)).json()["tracking_id"]
        assert doc.patch(f"/encounters/{enc}/notes", json={"notes": "seen"}).status_code == 200
    return enc


def test_booking_key_reused_for_a_patient_on_another_shard_is_409(server, two_shards):
    a, b = two_shards
    key = f"k-{uuid.uuid4().hex}"
    with server.client("clinician", "prv-0009") as doc:
        first = doc.post("/encounters", json=booking(a), headers={"Idempotency-Key": key})
        before_b = _count(server, "select count(*) from encounters where patient_id=?", b)
        other = doc.post("/encounters", json=booking(b), headers={"Idempotency-Key": key})
        again = doc.post("/encounters", json=booking(a), headers={"Idempotency-Key": key})
    assert first.status_code == 202, first.text
    assert other.status_code == 409 and other.json()["code"] == "idempotency_key_reused", other.text
    assert _count(server, "select count(*) from encounters where patient_id=?", b) == before_b
    assert again.status_code == 202 and again.json() == first.json()
    assert again.headers["idempotent-replayed"] == "true"
    assert _count(server, "select count(*) from encounters where encounter_id=?", first.json()["tracking_id"]) == 1


def test_first_use_on_a_non_home_shard_then_reuse_anywhere(server, two_shards):
    """Whichever shard the first body lands on, every later reuse finds the key."""
    a, b = two_shards
    for first_pid, second_pid in ((a, b), (b, a)):
        key = f"k-{uuid.uuid4().hex}"
        with server.client("clinician", "prv-0010") as doc:
            first = doc.post("/encounters", json=booking(first_pid), headers={"Idempotency-Key": key})
            other = doc.post("/encounters", json=booking(second_pid), headers={"Idempotency-Key": key})
            again = doc.post("/encounters", json=booking(first_pid), headers={"Idempotency-Key": key})
        assert first.status_code == 202
        assert other.status_code == 409 and other.json()["code"] == "idempotency_key_reused"
        assert again.status_code == 202 and again.json() == first.json()


def test_claim_key_reused_for_an_encounter_on_another_shard_is_409(server, two_shards):
    a, b = two_shards
    enc_a, enc_b = _documented_encounter(server, a), _documented_encounter(server, b)
    key = f"c-{uuid.uuid4().hex}"
    with server.client("admin", "admin-idem") as admin:
        first = admin.post("/claims", json={"encounter_id": enc_a, "amount_cents": 700, "payer": "Demo Care"},
                           headers={"Idempotency-Key": key})
        other = admin.post("/claims", json={"encounter_id": enc_b, "amount_cents": 700, "payer": "Demo Care"},
                           headers={"Idempotency-Key": key})
        again = admin.post("/claims", json={"encounter_id": enc_a, "amount_cents": 700, "payer": "Demo Care"},
                           headers={"Idempotency-Key": key})
    assert first.status_code == 202, first.text
    assert other.status_code == 409 and other.json()["code"] == "idempotency_key_reused"
    assert _count(server, "select count(*) from claims where encounter_id=?", enc_b) == 0
    assert again.status_code == 202 and again.json() == first.json()
    assert again.headers["idempotent-replayed"] == "true"


def test_notes_accept_a_key_and_refuse_its_reuse_elsewhere(server, two_shards):
    a, b = two_shards
    with server.client("clinician", "prv-0011") as doc:
        enc_a = doc.post("/encounters", json=booking(a)).json()["tracking_id"]
        enc_b = doc.post("/encounters", json=booking(b)).json()["tracking_id"]
        key = f"n-{uuid.uuid4().hex}"
        first = doc.patch(f"/encounters/{enc_a}/notes", json={"notes": "first"}, headers={"Idempotency-Key": key})
        again = doc.patch(f"/encounters/{enc_a}/notes", json={"notes": "first"}, headers={"Idempotency-Key": key})
        other = doc.patch(f"/encounters/{enc_b}/notes", json={"notes": "first"}, headers={"Idempotency-Key": key})
    assert first.status_code == 200 and first.json()["version"] == 2
    assert again.status_code == 200 and again.json() == first.json()
    assert again.headers["idempotent-replayed"] == "true"
    assert other.status_code == 409 and other.json()["code"] == "idempotency_key_reused"
    assert _count(server, "select count(*) from history where entity_id=?", enc_a) == 2  # booked + one document


def test_key_reused_on_another_endpoint_is_409_and_keys_are_per_caller(server, two_shards):
    a, _ = two_shards
    key = f"x-{uuid.uuid4().hex}"
    with server.client("admin", "admin-idem-2") as admin:
        reg = admin.post("/patients", json={"pseudonym": "Key Person", "birth_year": 1970, "sex": "F"},
                         headers={"Idempotency-Key": key})
        changed = admin.post("/patients", json={"pseudonym": "Key Person", "birth_year": 1971, "sex": "F"},
                             headers={"Idempotency-Key": key})
        claim = admin.post("/claims", json={"encounter_id": "enc-0001-" + "0" * 32, "amount_cents": 1, "payer": "X"},
                           headers={"Idempotency-Key": key})
    assert reg.status_code == 201
    assert changed.status_code == 409 and changed.json()["code"] == "idempotency_key_reused"
    assert claim.status_code == 409 and claim.json()["code"] == "idempotency_key_reused"
    with server.client("clinician", "prv-0012") as someone_else:  # another caller's key space
        assert someone_else.post("/encounters", json=booking(a), headers={"Idempotency-Key": key}).status_code == 202


def test_a_refused_write_does_not_consume_the_key(server, two_shards):
    a, b = two_shards
    key = f"r-{uuid.uuid4().hex}"
    with server.client("clinician", "prv-0013") as doc:
        bad = doc.post("/encounters", json={**booking(b), "provider_id": "prv-9999"}, headers={"Idempotency-Key": key})
        good = doc.post("/encounters", json=booking(a), headers={"Idempotency-Key": key})
    assert bad.status_code == 422
    assert good.status_code == 202, good.text


def test_idempotency_keys_are_not_stored_in_clear(server, two_shards):
    a, _ = two_shards
    key = f"clear-{uuid.uuid4().hex}"
    with server.client("clinician", "prv-0014") as doc:
        assert doc.post("/encounters", json=booking(a), headers={"Idempotency-Key": key}).status_code == 202
    assert _count(server, "select count(*) from idempotency_keys where key=?", key) == 0
    assert _count(server, "select count(*) from idempotency_keys where user_id='prv-0014'") >= 1

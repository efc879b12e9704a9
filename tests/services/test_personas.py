"""The persona x endpoint matrix: each persona sees and does only what its role allows."""

from __future__ import annotations

import pytest

from .conftest import booking

PERSONAS = ("patient", "clinician", "admin", "sre")

# endpoint -> expected status per persona ("patient" acts on their own record here)
MATRIX = {
    "register_patient":  {"patient": 403, "clinician": 403, "admin": 201, "sre": 403},
    "get_patient":       {"patient": 200, "clinician": 200, "admin": 200, "sre": 403},
    "list_encounters":   {"patient": 200, "clinician": 200, "admin": 403, "sre": 403},
    "book_encounter":    {"patient": 202, "clinician": 202, "admin": 403, "sre": 403},
    "get_encounter":     {"patient": 200, "clinician": 200, "admin": 200, "sre": 403},
    "document":          {"patient": 403, "clinician": 200, "admin": 403, "sre": 403},
    "submit_claim":      {"patient": 403, "clinician": 403, "admin": 202, "sre": 403},
    "get_claim":         {"patient": 200, "clinician": 403, "admin": 200, "sre": 403},
    "kpis":              {"patient": 403, "clinician": 403, "admin": 200, "sre": 200},
    "providers":         {"patient": 200, "clinician": 200, "admin": 200, "sre": 200},
    "facilities":        {"patient": 200, "clinician": 200, "admin": 200, "sre": 200},
    "admin_shards":      {"patient": 403, "clinician": 403, "admin": 403, "sre": 200},
    "admin_verify":      {"patient": 403, "clinician": 403, "admin": 403, "sre": 200},
    "admin_replay":      {"patient": 403, "clinician": 403, "admin": 403, "sre": 200},
}


@pytest.fixture(scope="module")
def fixtures(server, patients):
    """One patient with an encounter and a claim, made by the personas allowed to make them."""
    pid = patients[4]
    with server.client("clinician", "prv-0001") as doc:
        enc = doc.post("/encounters", json=booking(pid)).json()["tracking_id"]
        to_claim = doc.post("/encounters", json=booking(pid)).json()["tracking_id"]  # claimed by the matrix
        for e in (enc, to_claim):  # claims need a documented encounter
            assert doc.patch(f"/encounters/{e}/notes", json={"notes": "seen"}).status_code == 200
    with server.client("admin", "admin-1") as admin:
        claim = admin.post("/claims", json={"encounter_id": enc, "amount_cents": 500, "payer": "Demo Care"}).json()["tracking_id"]
    return {"pid": pid, "enc": enc, "claim": claim, "to_claim": to_claim}


def call(client, name: str, f: dict):
    pid, enc, claim = f["pid"], f["enc"], f["claim"]
    return {
        "register_patient": lambda: client.post("/patients", json={"pseudonym": "Matrix Person", "birth_year": 1970, "sex": "M"}),
        "get_patient": lambda: client.get(f"/patients/{pid}"),
        "list_encounters": lambda: client.get(f"/patients/{pid}/encounters"),
        "book_encounter": lambda: client.post("/encounters", json=booking(pid)),
        "get_encounter": lambda: client.get(f"/encounters/{enc}"),
        "document": lambda: client.patch(f"/encounters/{enc}/notes", json={"notes": "matrix note"}),
        "submit_claim": lambda: client.post("/claims", json={"encounter_id": f["to_claim"], "amount_cents": 100,
                                                             "payer": "Demo Care"}),
        "get_claim": lambda: client.get(f"/claims/{claim}"),
        "kpis": lambda: client.get("/kpis/financial"),
        "providers": lambda: client.get("/providers"),
        "facilities": lambda: client.get("/facilities"),
        "admin_shards": lambda: client.get("/admin/shards"),
        "admin_verify": lambda: client.post("/admin/audit/verify"),
        "admin_replay": lambda: client.post("/admin/replay"),
    }[name]()


def user_for(persona: str, f: dict) -> str:
    return {"patient": f["pid"], "clinician": "prv-0001", "admin": "admin-1", "sre": "sre-1"}[persona]


@pytest.mark.parametrize("persona", PERSONAS)
@pytest.mark.parametrize("endpoint", sorted(MATRIX))
def test_persona_matrix(server, fixtures, endpoint, persona):
    with server.client(persona, user_for(persona, fixtures)) as client:
        resp = call(client, endpoint, fixtures)
    assert resp.status_code == MATRIX[endpoint][persona], resp.text
    if resp.status_code == 403:
        assert resp.json()["code"] in ("persona_forbidden", "not_own_record")


@pytest.mark.parametrize("endpoint", ["get_patient", "list_encounters", "book_encounter", "get_encounter", "get_claim"])
def test_patient_cannot_touch_another_patients_records(server, fixtures, patients, endpoint):
    with server.client("patient", patients[5]) as other:
        resp = call(other, endpoint, fixtures)
    assert resp.status_code == 403 and resp.json()["code"] == "not_own_record"


@pytest.mark.parametrize("endpoint", sorted(MATRIX))
@pytest.mark.parametrize("auth", [None, "Bearer not-a-jwt", "Basic abc"])
def test_missing_or_invalid_token_is_401(server, fixtures, endpoint, auth):
    with server.client() as anon:
        if auth:
            anon.headers["Authorization"] = auth
        resp = call(anon, endpoint, fixtures)
    assert resp.status_code == 401
    assert resp.json()["code"] in ("missing_token", "invalid_token") and resp.json()["request_id"]


def test_token_from_another_issuer_key_is_401(server, tmp_path, fixtures):
    from dataclasses import replace

    from api_services.auth import issue_dev_token
    from api_services.config import load_settings

    forged = issue_dev_token(replace(load_settings(), dev_issuer_key_file=tmp_path / "other.pem"), "sre", "sre-1")
    resp = server.client().get("/admin/shards", headers={"Authorization": f"Bearer {forged}"})
    assert resp.status_code == 401 and resp.json()["code"] == "invalid_token"
    assert forged not in server.log_path.read_text()

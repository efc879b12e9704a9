"""Issue 12, item 6: HTTP manners.

HEAD wherever GET; a 401 carries `WWW-Authenticate: Bearer` with the error; token lifetimes have
a configured maximum; error messages name the problem, never a library's exception class.
"""

from __future__ import annotations

import re
import time
from dataclasses import replace

import jwt
import pytest

from api_services.auth import load_or_create_dev_key
from api_services.config import load_settings

from .conftest import booking, run_cli

CLASS_NAME = re.compile(r"\b[A-Z][A-Za-z]+(Error|Exception)\b")


def _token(server, **claims) -> str:
    settings = replace(load_settings(), dev_issuer_key_file=server.data_dir / "dev-issuer.pem")
    now = int(time.time())
    body = {"iss": "pim-lab-dev", "aud": "pim-api", "sub": "sre-1", "persona": "sre", "iat": now, "exp": now + 60,
            **claims}
    body = {k: v for k, v in body.items() if v is not None}
    return jwt.encode(body, load_or_create_dev_key(settings.dev_issuer_key_file), algorithm="ES256",
                      headers={"kid": "pim-lab-dev-1"})


@pytest.fixture(scope="module")
def ids(server, patients):
    pid = patients[4]
    with server.client("clinician", "prv-0001") as doc:
        enc = doc.post("/encounters", json=booking(pid)).json()["tracking_id"]
        assert doc.patch(f"/encounters/{enc}/notes", json={"notes": "seen"}).status_code == 200
    with server.client("admin", "admin-1") as admin:
        claim = admin.post("/claims", json={"encounter_id": enc, "amount_cents": 10, "payer": "Demo Care"})
    return {"patient_id": pid, "encounter_id": enc, "claim_id": claim.json()["tracking_id"]}


def test_head_works_wherever_get_does(server, ids):
    spec = server.client().get("/openapi.json").json()
    paths = [p for p, ops in spec["paths"].items() if "get" in ops] + ["/healthz", "/readyz", "/metrics", "/openapi.json"]
    persona = {"/admin": ("sre", "sre-1"), "/kpis": ("admin", "admin-1"), "/claims": ("admin", "admin-1")}
    for template in paths:
        path = template.format(**ids)
        who = next((v for k, v in persona.items() if path.startswith(k)), ("clinician", "prv-0001"))
        with server.client(*who) as c:
            got, head = c.get(path), c.head(path)
        assert head.status_code == got.status_code, (path, head.status_code, got.status_code)
        assert head.content == b"" and head.headers["content-type"] == got.headers["content-type"], path


@pytest.mark.parametrize("auth,error", [(None, "invalid_request"), ("Bearer not-a-jwt", "invalid_token"),
                                        ("Basic abc", "invalid_request")])
def test_401_carries_www_authenticate_bearer_with_the_error(server, auth, error):
    headers = {"Authorization": auth} if auth else {}
    resp = server.client().get("/providers", headers=headers)
    assert resp.status_code == 401
    challenge = resp.headers["www-authenticate"]
    assert challenge.startswith("Bearer ") and f'error="{error}"' in challenge and 'realm="pim-api"' in challenge


def test_tokens_living_longer_than_the_maximum_are_refused(server):
    now = int(time.time())
    long_lived = _token(server, iat=now, exp=now + 2 * 86400)
    resp = server.client().get("/admin/shards", headers={"Authorization": f"Bearer {long_lived}"})
    assert resp.status_code == 401 and resp.json()["code"] == "invalid_token"
    assert "lifetime" in resp.json()["message"]
    no_iat = _token(server, iat=None, exp=now + 2 * 86400)
    assert server.client().get("/admin/shards", headers={"Authorization": f"Bearer {no_iat}"}).status_code == 401
    fine = _token(server, iat=now, exp=now + 600)
    assert server.client().get("/admin/shards", headers={"Authorization": f"Bearer {fine}"}).status_code == 200


def test_dev_issuer_refuses_a_ttl_above_the_maximum(server):
    proc = run_cli(server.workdir, "token", "--persona", "sre", "--user", "sre-1", "--ttl", "999999", check=False)
    assert proc.returncode != 0 and "maximum" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("claims,words", [
    ({"exp": int(time.time()) - 120, "iat": int(time.time()) - 300}, "expired"),
    ({"aud": "someone-else"}, "audience"),
    ({"iss": "elsewhere"}, "issuer"),
    ({"persona": "root"}, "persona"),
    ({"exp": None}, "exp"),
])
def test_token_errors_name_the_problem(server, claims, words):
    resp = server.client().get("/providers", headers={"Authorization": f"Bearer {_token(server, **claims)}"})
    assert resp.status_code == 401
    message = resp.json()["message"]
    assert words in message and not CLASS_NAME.search(message), message


def test_no_error_message_names_an_exception_class(server, ids):
    with server.client("clinician", "prv-0001") as c:
        responses = [
            c.get("/providers", headers={"Authorization": "Bearer a.b.c"}),
            c.post("/encounters", content=b"{not json", headers={"content-type": "application/json"}),
            c.post("/encounters", content=b"\xff\xfe", headers={"content-type": "application/json"}),
            c.get("/encounters/enc-12"),
            c.delete("/providers"),
            c.patch(f"/encounters/{ids['encounter_id']}/notes", json={"notes": ""}),
        ]
    for resp in responses:
        assert resp.status_code >= 400
        assert not CLASS_NAME.search(resp.text), resp.text

"""Gateway and services as separate processes (as in the cluster): forwarding, trace continuity,
rate limiting; and the worker services running on their own."""

from __future__ import annotations

import time

from .conftest import booking, run_cli, start_server


def test_gateway_forwards_to_separate_services_and_rate_limits(tmp_path):
    run_cli(tmp_path, "seed", "--patients", "3")
    patient = start_server(tmp_path, "patient")
    encounter = start_server(tmp_path, "encounter")
    relay = start_server(tmp_path, "outbox-relay")
    gateway = start_server(tmp_path, "gateway", env={
        "PIM_PATIENT_URL": patient.url, "PIM_ENCOUNTER_URL": encounter.url,
        "PIM_RATE_LIMIT_RPS": "2", "PIM_RATE_LIMIT_BURST": "6"})
    try:
        from api_services.seed import seeded_patient_id

        pid = seeded_patient_id(42, 0)
        with gateway.client("clinician", "prv-0001") as c:
            booked = c.post("/encounters", json=booking(pid), headers={"X-Request-Id": "gw-1"})
            assert booked.status_code == 202, booked.text
            enc = c.get(booked.headers["location"])
            assert enc.status_code == 200 and enc.json()["patient_id"] == pid
            # the service's answer passes through as it came: the same bytes, the same media type
            with encounter.client("clinician", "prv-0001") as direct:
                same = direct.get(booked.headers["location"])
            assert enc.content == same.content and enc.headers["content-type"] == same.headers["content-type"]
            assert c.get(f"/patients/{pid}").json()["patient_id"] == pid
            unauth = gateway.client().get(f"/patients/{pid}")
            assert unauth.status_code == 401
            assert c.get("/claims/clm-0001-" + "0" * 32).status_code == 503  # billing not configured here
            statuses = [c.get("/providers").status_code for _ in range(10)]
            assert 429 in statuses
            limited = c.get("/providers")
            assert limited.json()["code"] == "rate_limited" and int(limited.headers["retry-after"]) >= 1
        gw_line = next(l for l in gateway.log_lines() if l.get("correlation_id") == "gw-1")
        deadline = time.monotonic() + 5
        while not [l for l in encounter.log_lines() if l.get("correlation_id") == "gw-1"] and time.monotonic() < deadline:
            time.sleep(0.1)
        svc_line = next(l for l in encounter.log_lines() if l.get("correlation_id") == "gw-1")
        assert svc_line["request_id"] != gw_line["request_id"]  # each server makes its own
        assert gw_line["trace_id"] == svc_line["trace_id"] != ""
        assert gw_line["shard"] == svc_line["shard"] != "none"
        assert gateway.client().get("/openapi.json").json()["info"]["title"].startswith("PIM")
        assert relay.client().get("/readyz").json()["checks"]["outbox-relay"] == "ok"
        encounter.stop()  # unreachable (as when its pods drop out of their Service): retryable
        time.sleep(3)  # the rate limiter's bucket refills
        with gateway.client("clinician", "prv-0001") as c:
            gone = c.post("/encounters", json=booking(pid))
        assert gone.status_code == 503 and gone.json()["code"] == "upstream_unavailable", gone.text
        assert gone.headers["retry-after"] == "1"
    finally:
        for srv in (gateway, relay, encounter, patient):
            srv.stop()

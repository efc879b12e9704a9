"""The error budget as the operator reads it, from a real Prometheus scraping the real services
with the SLO's own rules loaded: whole under good traffic, falling with the burn rate rising and
the page alert firing when the backend dies, and an unreachable Prometheus said so."""

from __future__ import annotations

import pytest

from live_prometheus import GATEWAY_SLO, drive, register_patient, start_prometheus, start_services, wait_for
from pimlab_operator.slo import desired, prometheus, status
from pimlab_operator.slo.model import SLOSpec

SPEC = SLOSpec.model_validate(GATEWAY_SLO["spec"])
NAME, NS = GATEWAY_SLO["metadata"]["name"], GATEWAY_SLO["metadata"]["namespace"]


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    work = tmp_path_factory.mktemp("slo-live")
    services = start_services(work / "services")
    try:
        prom = start_prometheus(work / "prometheus",
                                {"gateway": f"127.0.0.1:{services.gateway_port}",
                                 "backend": f"127.0.0.1:{services.backend_port}"},
                                desired.rule_groups(GATEWAY_SLO, SPEC))
    except BaseException:
        services.stop()
        raise
    yield services, prom
    prom.stop()
    services.stop()


def _budget():
    reading = prometheus.read_slo(LIVE_URL[0], NAME, NS)
    budget, condition = status.budget_status(GATEWAY_SLO, SPEC, reading, LIVE_URL[0])
    return budget.to_k8s(), condition


LIVE_URL: list[str] = []


def test_budget_falls_burn_rises_and_page_fires_under_real_errors(live):
    services, prom = live
    LIVE_URL[:] = [prom.url]
    patient = register_patient(services)
    prom.wait_scraped("gateway", "backend")
    counts = drive(services, 40, patient)
    assert set(counts) == {202}, counts
    whole, condition = wait_for("a budget reading with traffic",
                                lambda: (b := _budget())[0].get("remaining") is not None and b, seconds=60)
    assert condition.reason == "Read"
    assert whole["remaining"] == 1 and whole["sli"] == 1 and whole["worstBurnRate"] == 0
    assert whole["firingAlerts"] == []
    assert {b["window"] for b in whole["burnRates"]} == {"1m", "5m"}

    services.stop_backend()  # a real outage: the gateway answers 503 upstream_unavailable
    counts = drive(services, 40, patient)
    assert set(counts) == {503}, counts
    threshold = 14.4
    burning, _ = wait_for("burn rate above the page threshold",
                          lambda: (b := _budget())[0].get("worstBurnRate", 0) > threshold and b, seconds=60)
    assert burning["remaining"] < whole["remaining"] and burning["sli"] < 1
    assert burning["remainingMinutes"] < 0.6 * 60  # 1% of 1h = 0.6 min at most
    firing, condition = wait_for("the page alert firing",
                                 lambda: (b := _budget())[0]["firingAlerts"] and b, seconds=60)
    assert [a["alert"] for a in firing["firingAlerts"]] == ["SLOErrorBudgetBurnPage"]
    assert firing["firingAlerts"][0]["longWindow"] == "5m" and firing["firingAlerts"][0]["severity"] == "page"
    assert "SLOErrorBudgetBurnPage" in condition.message
    alerts = prom.query('ALERTS{alertstate="firing",slo="gateway-write-availability"}')
    assert alerts and alerts[0]["metric"]["alertname"] == "SLOErrorBudgetBurnPage"
    # No recorded series is NaN or infinite, ever (the reader would drop them: compare counts).
    raw = prom.query('{__name__=~"slo:.+",slo="gateway-write-availability"}')
    assert all(v["value"][1] not in ("NaN", "+Inf", "-Inf") for v in raw), raw


def test_an_unreachable_prometheus_is_a_reason_not_a_crash():
    from live_prometheus import free_port

    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(prometheus.PrometheusUnavailable) as error:
        prometheus.read_slo(url, NAME, NS)
    assert error.value.reason == "PrometheusUnreachable" and url in str(error.value)


def test_a_prometheus_error_is_a_reason_too(live):
    _, prom = live
    with pytest.raises(prometheus.PrometheusUnavailable) as error:
        prometheus._get(prom.url, "/api/v1/query", {"query": "sum(("})
    assert error.value.reason == "PrometheusError" and "HTTP 400" in str(error.value)

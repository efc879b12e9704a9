"""A drill's budget bill from a real Prometheus scraping the real services: the SLO's own SLI
queries evaluated over the drill's own window (`slo.desired`, `slo.prometheus.instant_value`),
turned into the bill by `drill.judge.budget`. Half the drill's writes fail (the backend is
stopped halfway), so the drill's error ratio is about a half whatever Prometheus held before."""

from __future__ import annotations

import datetime as dt
import time

import pytest

from live_prometheus import GATEWAY_SLO, drive, register_patient, start_prometheus, start_services
from pimlab_operator.drill.judge import SloReading, budget
from pimlab_operator.schema import duration_seconds
from pimlab_operator.slo import desired, prometheus
from pimlab_operator.slo.model import SLOSpec

SPEC = SLOSpec.model_validate(GATEWAY_SLO["spec"])


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0)


def test_the_budget_a_drill_burns_is_read_over_its_own_window(tmp_path):
    services = start_services(tmp_path / "services")
    try:
        prom = start_prometheus(tmp_path / "prometheus", {"gateway": f"127.0.0.1:{services.gateway_port}",
                                                          "backend": f"127.0.0.1:{services.backend_port}"},
                                desired.rule_groups(GATEWAY_SLO, SPEC))
    except BaseException:
        services.stop()
        raise
    try:
        patient = register_patient(services)
        prom.wait_scraped("gateway", "backend")
        time.sleep(2)
        start = _now()
        assert set(drive(services, 30, patient)) == {202}
        halfway = _now()
        services.stop_backend()
        assert set(drive(services, 30, patient)) == {503}
        time.sleep(3)  # the last requests scraped (every second) before the window closes
        end = _now()
        time.sleep(2)
        seconds = (end - start).total_seconds()
        window = f"{round(seconds)}s"
        ratio = prometheus.instant_value(prom.url, desired.error_ratio_query(SPEC, window), end)
        total_rate = prometheus.instant_value(prom.url, desired.event_rate_queries(SPEC, window)[1], end)
        before = prometheus.instant_value(prom.url, desired.error_ratio_query(SPEC, f"{round((halfway - start).total_seconds())}s"),
                                          halfway)
    finally:
        prom.stop()
        services.stop()
    assert ratio == pytest.approx(0.5, abs=0.15)
    assert before == 0  # the first half alone burned nothing
    assert total_rate * seconds == pytest.approx(60, rel=0.35)
    bill = budget(SloReading("gateway-write-availability", objective=SPEC.objective,
                             window_seconds=duration_seconds(SPEC.window), error_ratio=ratio, total_rate=total_rate),
                  seconds, limit=0.05)
    # 99 % over 1 h: mean burn rate = ratio / 0.01; burned = that x drill length / 3600 s.
    assert bill.mean_burn_rate == pytest.approx(ratio / 0.01, rel=1e-6)
    assert bill.burned == pytest.approx(ratio / 0.01 * seconds / 3600, rel=1e-6)
    assert bill.bad_events == pytest.approx(bill.total_events * ratio, rel=1e-3)

"""abortIf against a live Prometheus: a running ChaosExperiment is aborted when the SLO it names
burns above its threshold (real 503s through a real gateway, scraped and recorded by a real
Prometheus, read into the SLO's status by the operator), with the measured burn in its reason;
and once Prometheus cannot be read, a new real run is refused (fail safe)."""

from __future__ import annotations

from live_prometheus import drive, register_patient
from pimlab.waiting import wait_for
from test_chaos_experiments import bare_pod, condition, experiment, pod_uids, settled
from test_slo_budget import setting  # noqa: F401 - the live services, Prometheus and operator

OPT_IN = "pim-sre.lab/chaos=enabled"


def test_slo_burn_aborts_a_running_experiment_and_an_unreadable_slo_refuses_one(cluster, setting):  # noqa: F811
    services, prom, ns, slo = setting["services"], setting["prometheus"], setting["namespace"], setting["name"]
    cluster.kubectl("label", "namespace", ns, OPT_IN)
    cluster.apply(bare_pod("victim-0", ns))
    prom.wait_scraped("gateway")
    patient = register_patient(services)
    assert set(drive(services, 20, patient)) == {202}
    wait_for(lambda: ((cluster.get("slo", slo, ns) or {}).get("status") or {}).get("errorBudget", {}).get("remaining") == 1,
             timeout=90, what="a whole error budget in the SLO's status")

    abort_if = [{"sloRef": slo, "burnRateAbove": 14.4}]
    cluster.apply(experiment("watched", ns, abortIf=abort_if, blastRadius={"maxPods": 1, "maxPercent": 100}))
    running = settled(cluster, "watched", ns, phases=("Recovering",))
    checked = next(e for e in running["status"]["timeline"] if e["event"] == "SLOChecked")
    assert f"{slo}: burn 0x" in checked["detail"]

    services.stop_backend()
    assert set(drive(services, 40, patient)) == {503}
    aborted = settled(cluster, "watched", ns, phases=("Aborted",), timeout=120)
    assert condition(aborted, "Degraded")["reason"] == "SLOBurnRateExceeded"
    reason = aborted["status"]["abortReason"]
    burn = float(reason.split(" at ")[1].split("x over")[0])
    assert burn > 14.4 and "burnRateAbove 14.4" in reason and aborted["status"]["verdict"] == "Failed"

    prom.stop()
    wait_for(lambda: "errorBudget" not in ((cluster.get("slo", slo, ns) or {}).get("status") or {}),
             timeout=60, what="the SLO's budget withdrawn once Prometheus is gone")
    before = pod_uids(cluster, ns)
    cluster.apply(experiment("blind", ns, abortIf=abort_if, blastRadius={"maxPods": 1, "maxPercent": 100}))
    blind = settled(cluster, "blind", ns)
    assert blind["status"]["phase"] == "Aborted" and condition(blind)["reason"] == "SLOUnreadable"
    assert "fail safe" in blind["status"]["abortReason"]
    assert pod_uids(cluster, ns) == before

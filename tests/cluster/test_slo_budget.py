"""The operator, as its own process and ServiceAccount, keeps an SLO's status true to a real
Prometheus named by the Lab: the budget whole under good traffic, falling with the worst burn
above the page threshold and the page alert listed when the backend dies, and -- once Prometheus
is gone -- no figure left looking current, a condition with the reason, the operator alive."""

from __future__ import annotations

import copy
import time

import pytest
import json
from pathlib import Path

import yaml

from live_prometheus import (GATEWAY_SLO, drive, free_port, known_names, promql_metric_names, register_patient,
                             start_prometheus, start_services)
from operator_process import operator_process
from pimlab.waiting import wait_for
from pimlab_operator.slo import desired
from pimlab_operator.slo.model import SLOSpec
from test_operator_core import condition, sample


@pytest.fixture(scope="module")
def setting(cluster, crds_installed, thirdparty_crds, tmp_path_factory):
    """Services, a Prometheus with this namespace's SLO rules, the operator reading it."""
    work = tmp_path_factory.mktemp("slo-budget")
    namespace = f"slo-{int(time.time()) % 100000}"
    slo = copy.deepcopy(GATEWAY_SLO)
    slo["metadata"] = {"name": slo["metadata"]["name"], "namespace": namespace}
    spec = SLOSpec.model_validate(slo["spec"])
    services = start_services(work / "services")
    prom = None
    try:
        metrics_port = free_port()
        prom = start_prometheus(work / "prometheus", {"gateway": f"127.0.0.1:{services.gateway_port}",
                                                      "backend": f"127.0.0.1:{services.backend_port}",
                                                      "operator": f"127.0.0.1:{metrics_port}"},
                                desired.rule_groups(slo, spec))
        lab = sample("Lab", "pim", namespace)
        lab["spec"]["observability"] = {**lab["spec"].get("observability", {}), "prometheusUrl": prom.url}
        with operator_process(cluster, tmp_path_factory, "slo-budget", namespace=namespace, metrics_port=metrics_port,
                              env={"PIMLAB_SLO_REFRESH_SECONDS": "2"}, documents=[lab, slo]) as process:
            yield {"namespace": namespace, "services": services, "prometheus": prom, "operator": process,
                   "name": slo["metadata"]["name"]}
    finally:
        if prom:
            prom.stop()
        services.stop()


def _slo(cluster, setting) -> dict:
    return cluster.get("slo", setting["name"], setting["namespace"]) or {}


def _budget(cluster, setting) -> dict:
    return (_slo(cluster, setting).get("status") or {}).get("errorBudget") or {}


def test_status_follows_the_live_budget_and_an_outage_of_prometheus(cluster, setting):
    services, prom, ns = setting["services"], setting["prometheus"], setting["namespace"]
    prom.wait_scraped("gateway")
    patient = register_patient(services)
    assert set(drive(services, 40, patient)) == {202}
    whole = wait_for(lambda: (b := _budget(cluster, setting)).get("remaining") == 1 and b, timeout=90,
                     what="status.errorBudget.remaining == 1")
    assert whole["worstBurnRate"] == 0 and whole["firingAlerts"] == [] and whole["prometheusUrl"] == prom.url
    assert condition(_slo(cluster, setting), "BudgetCurrent")["reason"] == "Read"
    kinds = {o["kind"] for o in _slo(cluster, setting)["status"]["generatedObjects"]}
    assert {"PrometheusRule", "GrafanaAlertRuleGroup", "ConfigMap"} <= kinds

    services.stop_backend()
    assert set(drive(services, 40, patient)) == {503}
    burning = wait_for(lambda: (b := _budget(cluster, setting)).get("firingAlerts") and b, timeout=90,
                       what="the page alert in status.errorBudget.firingAlerts")
    assert burning["firingAlerts"][0]["alert"] == "SLOErrorBudgetBurnPage"
    assert burning["remaining"] < 1 and burning["worstBurnRate"] > 14.4
    assert burning["evaluatedAt"] > whole["evaluatedAt"]
    table = cluster.kubectl("get", "slo", setting["name"], "-n", ns).stdout
    assert "BUDGET" in table.splitlines()[0] and "WORST BURN" in table.splitlines()[0]

    _every_dashboard_query_reads_live_series(prom)

    prom.stop()
    gone = wait_for(lambda: (o := _slo(cluster, setting)) and condition(o, "BudgetCurrent").get("status") == "False"
                    and o, timeout=60, what="BudgetCurrent=False once Prometheus is gone")
    status = gone["status"]
    assert condition(gone, "BudgetCurrent")["reason"] == "PrometheusUnreachable"
    assert prom.url in condition(gone, "BudgetCurrent")["message"]
    assert "errorBudget" not in status, "a figure read before the outage must not look current"
    assert status["lastErrorBudget"]["evaluatedAt"] >= burning["evaluatedAt"]
    assert condition(gone, "Degraded")["status"] == "True" and status["phase"] == "Degraded"
    assert condition(gone, "Ready")["status"] == "True"
    assert setting["operator"].pid(), "the operator is still running"


ROOT = Path(__file__).resolve().parents[2]


def _every_dashboard_query_reads_live_series(prom) -> None:
    """Each PromQL query of dashboards/, of the SLO dashboards and of the Grafana-managed alert
    rules names only metrics this Prometheus has: scraped from the real services and operator,
    recorded by the SLO rules, or ALERTS (the page alert is firing by now)."""
    queries: dict[str, list[str]] = {}
    for path in sorted((ROOT / "dashboards").glob("*.json")):
        body = json.loads(path.read_text())
        queries[path.name] = ([t["expr"] for p in body["panels"] for t in p.get("targets", [])]
                              + [a["expr"] for a in body.get("annotations", {}).get("list", []) if a.get("expr")])
    for body in (d for d in yaml.safe_load_all((ROOT / "samples" / "30-slos.yaml").read_text()) if d):
        body["metadata"]["uid"] = "uid"
        spec = SLOSpec.model_validate(body["spec"])
        queries[f"slo {body['metadata']['name']}"] = (
            [t["expr"] for p in desired.dashboard(body, spec)["panels"] for t in p["targets"]]
            + [r["expr"] for r in desired.grafana_rules(body, spec)])
    known = known_names(prom)
    missing = {f"{where}: {name}" for where, exprs in queries.items() for e in exprs
               for name in promql_metric_names(e) if name not in known}
    assert not missing, f"queries name metrics the live Prometheus does not have: {sorted(missing)}"
    assert len(queries) >= 6 + 8

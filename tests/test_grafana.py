"""Grafana cannot run here. What it would load is checked with its own typed SDK
(grafana-foundation-sdk): the dashboards in dashboards/ are built by it and must be current; the
SLO dashboards and Grafana-managed alert rules the operator renders survive a round trip through
the SDK's models (nothing we write is unknown to Grafana's schema; enums hold). Each query's
metric names are checked against a live Prometheus in tests/cluster/test_slo_budget.py."""

from __future__ import annotations

import json
import typing
from pathlib import Path

import pytest
import yaml

pytest.importorskip("grafana_foundation_sdk")
from grafana_foundation_sdk.cog.encoder import JSONEncoder  # noqa: E402
from grafana_foundation_sdk.models import alerting as sdk_alerting  # noqa: E402
from grafana_foundation_sdk.models import dashboard as sdk_dashboard  # noqa: E402

from pimlab import dashboards  # noqa: E402
from pimlab_operator.slo import desired as slo  # noqa: E402
from pimlab_operator.slo.model import SLOSpec  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SLOS = [d for d in yaml.safe_load_all((ROOT / "samples" / "30-slos.yaml").read_text()) if d]
for _i, _d in enumerate(SLOS):
    _d["metadata"]["uid"] = f"uid-{_i}"


def _json(obj) -> dict:
    return json.loads(json.dumps(obj, cls=JSONEncoder))


def test_committed_dashboards_are_what_the_sdk_builds():
    for name, text in dashboards.rendered().items():
        path = ROOT / "dashboards" / name
        assert path.is_file() and path.read_text() == text, f"{path} is stale: python -m pimlab.dashboards"


def test_the_five_dashboards_exist():
    titles = {json.loads((ROOT / "dashboards" / n).read_text())["title"] for n in dashboards.BUILDERS}
    assert titles == {"PIM SLO overview", "PIM persona journeys", "PIM shard routing", "PIM shard HA and failovers",
                      "PIM chaos annotations"}


def _round_trip(body: dict) -> None:
    model = sdk_dashboard.Dashboard.from_json(body)
    again = _json(model)
    assert again["uid"] == body["uid"] and again["title"] == body["title"]
    assert [p["title"] for p in again["panels"]] == [p["title"] for p in body["panels"]]
    for before, after in zip(body["panels"], again["panels"]):
        assert [t["expr"] for t in after.get("targets", [])] == [t["expr"] for t in before.get("targets", [])]
        assert after["gridPos"] == before["gridPos"]


@pytest.mark.parametrize("path", sorted((ROOT / "dashboards").glob("*.json")), ids=lambda p: p.name)
def test_dashboard_json_round_trips_through_the_sdk_model(path):
    _round_trip(json.loads(path.read_text()))


@pytest.mark.parametrize("body", SLOS, ids=lambda b: b["metadata"]["name"])
def test_slo_dashboard_round_trips_through_the_sdk_model(body):
    _round_trip(slo.dashboard(body, SLOSpec.model_validate(body["spec"])))


def _grafana_rules(body: dict) -> list[dict]:
    spec = SLOSpec.model_validate(body["spec"])
    children = slo.desired_children(body, spec, True, with_grafana_operator=True)
    group = next(c for c in children if c["kind"] == "GrafanaAlertRuleGroup")
    provisioning = next(c for c in children if c["metadata"]["name"].endswith("-grafana-alerts"))
    (text,) = provisioning["data"].values()
    provisioned = yaml.safe_load(text)["groups"][0]
    return [(r, group["spec"]["folderUID"], group["spec"]["name"]) for r in group["spec"]["rules"]] + [
        (r, provisioned["folder"], provisioned["name"]) for r in provisioned["rules"]]


@pytest.mark.parametrize("body", SLOS, ids=lambda b: b["metadata"]["name"])
def test_grafana_alert_rules_fit_grafanas_rule_model(body):
    states = {
        "execErrState": typing.get_args(sdk_alerting.Rule.__annotations__["exec_err_state"]),
        "noDataState": typing.get_args(sdk_alerting.Rule.__annotations__["no_data_state"]),
    }
    rules = _grafana_rules(body)
    assert rules
    for rule, folder, group in rules:
        full = {**rule, "folderUID": folder, "ruleGroup": group, "orgID": 1}
        again = _json(sdk_alerting.Rule.from_json(full))
        unknown = set(full) - set(again)
        assert not unknown, f"keys Grafana's Rule model does not know: {unknown}"
        for key in ("uid", "title", "condition", "for", "labels", "annotations"):
            assert again[key] == full[key], key
        for name, allowed in states.items():
            assert full[name] in allowed, (name, full[name])
        assert [q["refId"] for q in again["data"]] == ["A", "C"]
        assert again["data"][0]["model"]["expr"] == full["data"][0]["model"]["expr"]
        assert again["data"][0]["relativeTimeRange"] == full["data"][0]["relativeTimeRange"]

"""The lab's Grafana dashboards, built with Grafana's own typed SDK (grafana-foundation-sdk) and
written as JSON into dashboards/ (`pimlab dashboards`; `--check` fails when a file is stale).

Every query uses only series the lab produces: the services' RED and data-path metrics
(`pim_*`), the SLOs' recording rules (`slo:*`), the operator's metrics (`pimlab_operator_*`,
`sql_failover_duration_seconds`, `chaos_experiment_active`, `pimlab_drill_phase`) and
Prometheus's own `ALERTS`. The tests check each name against a live Prometheus.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

FILTER = 'service=~"$service", shard=~"$shard", persona=~"$persona"'
SLO_JOIN = "on(slo, slo_namespace)"


def _sdk():
    try:  # Grafana's SDK: an optional dependency (the test extra)
        from grafana_foundation_sdk.builders import common, dashboard, prometheus, stat, table, timeseries
        from grafana_foundation_sdk.models import dashboard as model
    except ImportError as error:  # pragma: no cover - the test extra installs it
        raise SystemExit("grafana-foundation-sdk is not installed: pip install -e '.[test]'") from error
    return common, dashboard, prometheus, stat, table, timeseries, model


def _target(prometheus, expr: str, legend: str | None = None, ref: str = "A", instant: bool = False):
    query = prometheus.Dataquery().expr(expr).ref_id(ref)
    if legend:
        query = query.legend_format(legend)
    return query.instant() if instant else query.range()


def _panel(kind, title: str, targets: list, unit: str, w: int, h: int = 8, description: str = ""):
    common, dashboard, prometheus, stat, table, timeseries, model = _sdk()
    builder = {"timeseries": timeseries.Panel, "stat": stat.Panel, "table": table.Panel}[kind]()
    builder = builder.title(title).datasource(model.DataSourceRef(type_val="prometheus", uid="prometheus"))
    builder = builder.unit(unit).span(w).height(h)
    if description:
        builder = builder.description(description)
    for index, (expr, legend) in enumerate(targets):
        builder = builder.with_target(_target(prometheus, expr, legend, chr(65 + index), instant=kind != "timeseries"))
    return builder


def _variable(name: str, query: str):
    common, dashboard, prometheus, stat, table, timeseries, model = _sdk()
    return (dashboard.QueryVariable(name).label(name).query(query)
            .datasource(model.DataSourceRef(type_val="prometheus", uid="prometheus"))
            .include_all(True).all_value(".*").multi(True).refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED))


def _annotation(name: str, expr: str, color: str):
    common, dashboard, prometheus, stat, table, timeseries, model = _sdk()
    return (dashboard.AnnotationQuery().name(name).enable(True).icon_color(color).expr(expr)
            .datasource(model.DataSourceRef(type_val="prometheus", uid="prometheus")))


def _dashboard(uid: str, title: str, description: str, tags: list[str], panels: list, variables=(),
               annotations=()):
    common, dashboard, prometheus, stat, table, timeseries, model = _sdk()
    builder = (dashboard.Dashboard(title).uid(uid).description(description).tags(["pim-sre-lab", *tags])
               .time("now-6h", "now").refresh("30s").timezone("utc").readonly())
    for variable in variables:
        builder = builder.with_variable(variable)
    for annotation in annotations:
        builder = builder.annotation(annotation)
    for panel in panels:
        builder = builder.with_panel(panel)
    return builder.build()


def _red_variables():
    return [_variable("service", "label_values(pim_http_requests_total, service)"),
            _variable("shard", "label_values(pim_http_requests_total, shard)"),
            _variable("persona", "label_values(pim_http_requests_total, persona)")]


def slo_overview():
    budget = "(1 - slo:objective:ratio)"
    panels = [
        _panel("stat", "Error budget remaining", [("slo:error_budget:remaining_ratio", "{{slo}}")], "percentunit", 12, 6,
               "Share of each SLO's window budget left (below 0: overspent)."),
        _panel("stat", "SLI over the compliance window",
               [(f"1 - (1 - slo:error_budget:remaining_ratio) * {SLO_JOIN} {budget}", "{{slo}}")], "percentunit", 12, 6),
        _panel("timeseries", "Burn rate 1h (1 = on budget; 14.4 pages)",
               [(f"slo:sli_error:ratio_rate1h / {SLO_JOIN} {budget}", "{{slo}}")], "none", 12),
        _panel("timeseries", "Burn rate 6h (6 pages)",
               [(f"slo:sli_error:ratio_rate6h / {SLO_JOIN} {budget}", "{{slo}}")], "none", 12),
        _panel("timeseries", "Error ratio 5m by SLO", [("slo:sli_error:ratio_rate5m", "{{slo}}")], "percentunit", 12),
        _panel("table", "Firing SLO alerts",
               [('ALERTS{alertstate="firing", alertname=~"SLO.*"}', "{{alertname}} {{slo}} {{long_window}}")], "none", 12),
    ]
    return _dashboard("pim-slo-overview", "PIM SLO overview",
                      "Every SLO: budget left, SLI, burn rates and firing alerts (from the SLOs' recording rules).",
                      ["slo"], panels, annotations=[_annotation(
                          "SLO alerts", 'ALERTS{alertstate="firing", alertname=~"SLO.*"}', "red")])


def persona_journeys():
    panels = [
        _panel("timeseries", "Requests by persona and route",
               [(f"sum by (persona, route, method) (rate(pim_http_requests_total{{{FILTER}}}[$__rate_interval]))",
                 "{{persona}} {{method}} {{route}}")], "reqps", 24),
        _panel("timeseries", "Error ratio (5xx) by persona",
               [(f'sum by (persona) (rate(pim_http_requests_total{{{FILTER}, status=~"5.."}}[$__rate_interval]))'
                 f" / sum by (persona) (rate(pim_http_requests_total{{{FILTER}}}[$__rate_interval]))", "{{persona}}")],
               "percentunit", 12),
        _panel("timeseries", "Refused requests (4xx) by persona",
               [(f'sum by (persona, status) (rate(pim_http_requests_total{{{FILTER}, status=~"4.."}}[$__rate_interval]))',
                 "{{persona}} {{status}}")], "reqps", 12),
        _panel("timeseries", "Latency p95 by persona and route",
               [("histogram_quantile(0.95, sum by (le, persona, route) (rate("
                 f"pim_http_request_duration_seconds_bucket{{{FILTER}}}[$__rate_interval])))", "{{persona}} {{route}}")],
               "s", 24),
    ]
    return _dashboard("pim-persona-journeys", "PIM persona journeys",
                      "What each persona does and feels: request mix, errors, refusals and latency by route.",
                      ["personas"], panels, variables=_red_variables())


def shard_routing():
    panels = [
        _panel("timeseries", "Requests by shard",
               [(f"sum by (shard) (rate(pim_http_requests_total{{{FILTER}}}[$__rate_interval]))", "{{shard}}")],
               "reqps", 12),
        _panel("timeseries", "Share of traffic per shard",
               [(f"sum by (shard) (rate(pim_http_requests_total{{{FILTER}}}[$__rate_interval]))"
                 f" / ignoring(shard) group_left sum(rate(pim_http_requests_total{{{FILTER}}}[$__rate_interval]))",
                 "{{shard}}")], "percentunit", 12),
        _panel("timeseries", "Requests by shard and route",
               [(f"sum by (shard, route) (rate(pim_http_requests_total{{{FILTER}}}[$__rate_interval]))",
                 "{{shard}} {{route}}")], "reqps", 24),
        _panel("stat", "Shard-map version in use", [("max(pim_shard_map_version)", "version")], "none", 6, 6),
        _panel("timeseries", "Write transaction p95 by shard",
               [("histogram_quantile(0.95, sum by (le, shard) (rate("
                 'pim_db_transaction_duration_seconds_bucket{shard=~"$shard"}[$__rate_interval])))', "{{shard}}")],
               "s", 18, 6),
    ]
    return _dashboard("pim-shard-routing", "PIM shard routing",
                      "Where patient_id hashing sends traffic: requests, share and write latency per shard.",
                      ["shards"], panels, variables=_red_variables())


def shard_ha():
    panels = [
        _panel("timeseries", "Shard unavailable (503) by shard",
               [(f'sum by (shard) (rate(pim_http_requests_total{{{FILTER}, status="503"}}[$__rate_interval]))',
                 "{{shard}}")], "reqps", 12,
               description="Requests refused because the shard's database could not be reached (failover window)."),
        _panel("timeseries", "Availability by shard",
               [(f'1 - (sum by (shard) (rate(pim_http_requests_total{{{FILTER}, status=~"5.."}}[$__rate_interval]))'
                 f" or sum by (shard) (rate(pim_http_requests_total{{{FILTER}}}[$__rate_interval])) * 0)"
                 f" / sum by (shard) (rate(pim_http_requests_total{{{FILTER}}}[$__rate_interval]))", "{{shard}}")],
               "percentunit", 12),
        _panel("timeseries", "Outbox pending and projection lag by shard",
               [('sum by (shard) (pim_outbox_pending_events{shard=~"$shard"})', "outbox {{shard}}"),
                ('sum by (shard) (pim_projection_lag_events{shard=~"$shard"})', "projection {{shard}}")],
               "none", 12),
        _panel("timeseries", "Operator: Shard reconciles and errors",
               [('sum by (trigger) (rate(pimlab_operator_reconciles_total{kind="Shard"}[$__rate_interval]))',
                 "{{trigger}}"),
                ('histogram_quantile(0.95, sum by (le) (rate(pimlab_operator_reconcile_duration_seconds_bucket'
                 '{kind="Shard"}[$__rate_interval])))', "p95 duration")], "none", 12,
               description="Failover decisions run in the Shard reconcile; its history is Shard.status.lastFailover."),
        _panel("timeseries", "Completed failovers: duration by shard and reason",
               [('sum by (shard, reason) (increase(sql_failover_duration_seconds_sum{shard=~"$shard"}'
                 '[$__rate_interval])) / sum by (shard, reason) (increase('
                 'sql_failover_duration_seconds_count{shard=~"$shard"}[$__rate_interval]))', "{{shard}} {{reason}}")],
               "s", 24,
               description="A point where a failover or switchover completed: its durationSeconds from the"
                           " Shard's status (decision to the new primary's first acknowledged write)."),
    ]
    return _dashboard("pim-shard-ha", "PIM shard HA and failovers",
                      "How shards ride out a primary loss: refused writes, availability, replication backlog.",
                      ["shards", "ha"], panels, variables=_red_variables())


def chaos_annotations():
    panels = [
        _panel("timeseries", "Error ratio (5xx) by service",
               [(f'sum by (service) (rate(pim_http_requests_total{{{FILTER}, status=~"5.."}}[$__rate_interval]))'
                 f" / sum by (service) (rate(pim_http_requests_total{{{FILTER}}}[$__rate_interval]))", "{{service}}")],
               "percentunit", 12),
        _panel("timeseries", "Latency p95 by service",
               [("histogram_quantile(0.95, sum by (le, service) (rate("
                 f"pim_http_request_duration_seconds_bucket{{{FILTER}}}[$__rate_interval])))", "{{service}}")],
               "s", 12),
        _panel("timeseries", "Error budget remaining during experiments",
               [("slo:error_budget:remaining_ratio", "{{slo}}")], "percentunit", 24),
    ]
    annotations = [
        _annotation("SLO burn alerts", 'ALERTS{alertstate="firing", alertname=~"SLOErrorBudgetBurn.*"}', "red"),
        _annotation("Shard map changed", "changes(max(pim_shard_map_version)[2m:]) > 0", "blue"),
        _annotation("Chaos fault in flight", "max by (namespace, experiment, action) (chaos_experiment_active) > 0",
                    "orange"),
        _annotation("Failover completed",
                    "sum by (namespace, shard, reason) (increase(sql_failover_duration_seconds_count[1m])) > 0",
                    "purple"),
        _annotation("Drill injecting or recovering",
                    'max by (namespace, drill, phase) (pimlab_drill_phase{phase=~"Injecting|Recovering"}) > 0',
                    "yellow"),
    ]
    return _dashboard("pim-chaos", "PIM chaos annotations",
                      "Service health with chaos-related events marked: SLO burn alerts, shard-map changes,"
                      " chaos faults in flight, completed failovers and drills injecting or recovering.",
                      ["chaos"], panels, variables=_red_variables(), annotations=annotations)


BUILDERS = {
    "slo-overview.json": slo_overview,
    "persona-journeys.json": persona_journeys,
    "shard-routing.json": shard_routing,
    "shard-ha.json": shard_ha,
    "chaos-annotations.json": chaos_annotations,
}


def rendered() -> dict[str, str]:
    from grafana_foundation_sdk.cog.encoder import JSONEncoder  # optional dependency, see _sdk

    out = {}
    for name, build in BUILDERS.items():
        body = json.loads(json.dumps(build(), cls=JSONEncoder))
        _number_panels(body)
        out[name] = json.dumps(body, indent=2, sort_keys=True) + "\n"
    return out


def _number_panels(body: dict) -> None:
    """Unique panel ids and a left-to-right grid layout (the SDK leaves both to the caller)."""
    x = y = row_h = 0
    for index, panel in enumerate(body.get("panels", []), start=1):
        panel["id"] = index
        pos = panel.setdefault("gridPos", {"w": 12, "h": 8})
        if x + pos["w"] > 24:
            x, y, row_h = 0, y + row_h, 0
        pos.update(x=x, y=y)
        x, row_h = x + pos["w"], max(row_h, pos["h"])
    body.setdefault("schemaVersion", 39)
    body.setdefault("templating", {}).setdefault("list", [])
    body.setdefault("annotations", {}).setdefault("list", [])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", default=str(Path(__file__).resolve().parents[1] / "dashboards"))
    parser.add_argument("--check", action="store_true", help="exit 1 if a file differs")
    args = parser.parse_args(argv)
    out_dir = Path(args.out_dir)
    stale = []
    for name, text in rendered().items():
        path = out_dir / name
        if args.check:
            if not path.is_file() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
            print(path)
    for name in stale:
        print(f"stale: {out_dir / name} (run `python -m pimlab.dashboards`)", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())

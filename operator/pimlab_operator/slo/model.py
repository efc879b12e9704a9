"""SLO: an objective on one service (and journey) that becomes recording rules, burn-rate alerts and a dashboard."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import ConfigDict, Field, StringConstraints, model_validator

from pimlab_operator.schema import (
    AGE_COLUMN,
    MESSAGE_COLUMN,
    READY_COLUMN,
    ApiModel,
    CrdInfo,
    Duration,
    HttpUrl,
    Journey,
    LabelMap,
    ObjectRef,
    PrinterColumn,
    Resource,
    ServiceName,
    StatusBase,
    StatusModel,
    Text,
    Window,
    cel,
    duration_seconds,
    list_map,
    rules,
)

#: Placeholder the operator replaces with each alerting window (5m, 30m, 1h, 6h, ...).
WINDOW_PLACEHOLDER = "{{window}}"
PromQL = Annotated[str, StringConstraints(min_length=1, max_length=4096)]


def _needs_window(field: str) -> dict[str, str]:
    """A rule: the query must contain the window placeholder, or burn rates cannot be computed."""
    return cel(
        f"self.{field}.contains('{WINDOW_PLACEHOLDER}')",
        f"{field} must contain {WINDOW_PLACEHOLDER} as its range, e.g. rate(http_requests_total[{WINDOW_PLACEHOLDER}])",
        field_path=f".{field}",
    )


def _check_window(value: str, field: str) -> None:
    if WINDOW_PLACEHOLDER not in value:
        raise ValueError(f"{field} must contain {WINDOW_PLACEHOLDER} as its range")


class RatioSli(ApiModel):
    """Error ratio = errors / total, both PromQL over `{{window}}`."""

    model_config = ConfigDict(json_schema_extra=rules(_needs_window("errors"), _needs_window("total")))

    errors: PromQL = Field(description="PromQL rate of bad events over [{{window}}].")
    total: PromQL = Field(description="PromQL rate of all events over [{{window}}].")

    @model_validator(mode="after")
    def _windows(self) -> RatioSli:
        _check_window(self.errors, "errors")
        _check_window(self.total, "total")
        return self


class LatencySli(ApiModel):
    """Share of requests slower than `threshold`, from a Prometheus histogram."""

    metric: Annotated[str, StringConstraints(pattern=r"^[a-zA-Z_:][a-zA-Z0-9_:]*$", max_length=200)] = Field(
        "pim_http_request_duration_seconds",
        description="Histogram base name (without _bucket/_count), default pim_http_request_duration_seconds"
        " (the services' request-latency histogram).",
    )
    threshold: Duration = Field(
        description="Requests slower than this are bad, e.g. 300ms; must equal one of the histogram's bucket bounds."
    )
    selector: Annotated[str, StringConstraints(max_length=1024)] | None = Field(
        None, description='Label matchers that pick the requests, e.g. route="/encounters",method="POST".'
    )


class RawSli(ApiModel):
    """An error-ratio query written in full."""

    model_config = ConfigDict(json_schema_extra=rules(_needs_window("errorRatio")))

    error_ratio: PromQL = Field(description="PromQL giving the error ratio (0..1) over [{{window}}].")

    @model_validator(mode="after")
    def _window(self) -> RawSli:
        _check_window(self.error_ratio, "errorRatio")
        return self


class Sli(ApiModel):
    """How good and bad events are counted: exactly one of ratio, latency or raw."""

    model_config = ConfigDict(
        json_schema_extra=rules(
            cel(
                "[has(self.ratio), has(self.latency), has(self.raw)].exists_one(set, set)",
                "sli needs exactly one of ratio, latency or raw",
            )
        )
    )

    ratio: RatioSli | None = Field(None, description="errors / total queries.")
    latency: LatencySli | None = Field(None, description="Histogram latency threshold.")
    raw: RawSli | None = Field(None, description="A full error-ratio query.")

    @model_validator(mode="after")
    def _exactly_one(self) -> Sli:
        if sum(kind is not None for kind in (self.ratio, self.latency, self.raw)) != 1:
            raise ValueError("sli needs exactly one of ratio, latency or raw")
        return self


class BurnTier(ApiModel):
    """One multi-window burn-rate alert: it fires while the error ratio over both windows is above
    `burnRate` times the error budget (the long window says the burn is real, the short one that
    it is still going on)."""

    long_window: Window = Field(description="Long window, e.g. 1h.")
    short_window: Window = Field(description="Short window, e.g. 5m; shorter than longWindow (the workbook uses 1/12).")
    burn_rate: float = Field(gt=0, le=1000, description="Burn-rate factor: 14.4 spends 2% of a 30-day budget in one hour.")
    enabled: bool = Field(True, description="Generate this tier's alert (default true).")
    for_: Duration | None = Field(None, alias="for", description="How long the condition must hold; unset: the severity's.")
    labels: LabelMap | None = Field(None, description="Labels added to this tier's alert (over the severity's).")

    @model_validator(mode="after")
    def _windows(self) -> BurnTier:
        if duration_seconds(self.short_window) >= duration_seconds(self.long_window):
            raise ValueError(f"shortWindow {self.short_window} must be shorter than longWindow {self.long_window}")
        return self


#: The Google SRE Workbook's multi-window multi-burn-rate table (chapter 5, "Alerting on SLOs").
WORKBOOK_TIERS = {
    "page": ({"longWindow": "1h", "shortWindow": "5m", "burnRate": 14.4},
             {"longWindow": "6h", "shortWindow": "30m", "burnRate": 6.0}),
    "ticket": ({"longWindow": "1d", "shortWindow": "2h", "burnRate": 3.0},
               {"longWindow": "3d", "shortWindow": "6h", "burnRate": 1.0}),
}
DEFAULT_FOR = {"page": "2m", "ticket": "15m"}


class AlertSeverity(ApiModel):
    """One class of multi-window multi-burn-rate alerts."""

    model_config = ConfigDict(json_schema_extra=rules(cel(
        "!has(self.tiers) || self.tiers.all(t, self.tiers.exists_one(u, u.longWindow == t.longWindow && u.shortWindow == t.shortWindow))",
        "two tiers have the same longWindow and shortWindow", field_path=".tiers")))

    enabled: bool = Field(True, description="Generate these alerts (default true).")
    labels: LabelMap | None = Field(None, description="Labels on the alerts; unset: severity=<page|ticket>.")
    for_: Duration | None = Field(None, alias="for", description="How long the condition must hold; unset: 2m page, 15m ticket.")
    tiers: list[BurnTier] | None = Field(
        None, max_length=8,
        description="Burn-rate tiers; unset: the Google SRE Workbook's (page: 1h/5m x14.4 and 6h/30m x6;"
                    " ticket: 1d/2h x3 and 3d/6h x1).")

    @model_validator(mode="after")
    def _unique(self) -> AlertSeverity:
        pairs = [(t.long_window, t.short_window) for t in self.tiers or ()]
        if len(pairs) != len(set(pairs)):
            raise ValueError("two tiers have the same longWindow and shortWindow")
        return self


class AbsentAlert(ApiModel):
    """An alert when the SLI's metric is missing altogether (a scrape broke, a metric was
    renamed) -- distinct from zero traffic, which never fires."""

    enabled: bool = Field(False, description="Generate the absent-metric alert (default false).")
    for_: Duration = Field("10m", alias="for", description="How long the metric must be missing (default 10m).")
    labels: LabelMap | None = Field(None, description="Labels on the alert; unset: severity=ticket.")


class Alerting(ApiModel):
    """Burn-rate alerts: page for fast burn (1h/5m at 14.4x, 6h/30m at 6x), ticket for slow burn."""

    page: AlertSeverity = Field(default_factory=AlertSeverity, description="Fast-burn alerts.")
    ticket: AlertSeverity = Field(default_factory=AlertSeverity, description="Slow-burn alerts (1d/2h at 3x, 3d/6h at 1x).")
    absent: AbsentAlert = Field(default_factory=AbsentAlert, description="Alert when the SLI's metric is absent.")
    runbook_url: HttpUrl | None = Field(None, description="Runbook linked from every alert (annotation runbook_url).")


class SloGrafana(ApiModel):
    """Grafana alert rules and dashboard."""

    folder: Annotated[str, StringConstraints(min_length=1, max_length=253)] = Field(
        "SLOs", description="Grafana folder for the alert rules and dashboard (default SLOs)."
    )
    dashboard: bool = Field(True, description="Generate a dashboard ConfigMap (default true).")
    folder_uid: Annotated[str, StringConstraints(pattern=r"^[a-zA-Z0-9-_]+$", max_length=40)] | None = Field(
        None, alias="folderUid",
        description="uid of the Grafana folder for the GrafanaAlertRuleGroup; unset: the folder's title in"
                    " lower case with dashes (SLOs -> slos).")
    instance_labels: LabelMap | None = Field(
        None, description="matchLabels of the Grafana instances (grafana-operator) that get the alert rules;"
                          " unset: dashboards=grafana.")


class SLOSpec(ApiModel):
    """The desired objective."""

    model_config = ConfigDict(json_schema_extra=rules(cel(
        "self.objective > 0.0 && self.objective < 100.0",
        "objective must be strictly between 0 and 100: an objective of 100 leaves no error budget"
        " (every burn rate would divide by zero); use e.g. 99.99",
        field_path=".objective")))

    service: ServiceName = Field(description="Lab service the SLO is about.")
    journey: Journey | None = Field(None, description="Persona journey the SLO protects; unset: the whole service.")
    description: Text | None = Field(None, description="What users feel when this SLO is missed.")
    sli: Sli = Field(description="Exactly one of ratio, latency or raw.")
    objective: float = Field(gt=0, lt=100, description="Target percentage of good events, strictly between 0 and 100, e.g. 99.9.")
    window: Window = Field("30d", description="Compliance window, e.g. 30d or 28d (default 30d).")
    alerting: Alerting = Field(default_factory=Alerting, description="Multi-window multi-burn-rate alerts.")
    grafana: SloGrafana = Field(default_factory=SloGrafana, description="Grafana folder and dashboard.")


class BurnRate(StatusModel):
    """The burn rate over one alert window: error ratio / error budget (1 = on budget)."""

    window: Window = Field(description="The window, e.g. 1h.")
    value: float | None = Field(None, ge=0, description="Burn rate; unset: no traffic in the window.")
    read_at: datetime = Field(description="When Prometheus was queried for it.")


class FiringAlert(StatusModel):
    """A burn-rate (or absent-metric) alert of this SLO that Prometheus reports firing."""

    alert: Annotated[str, StringConstraints(max_length=253)] = Field(description="Alert name.")
    severity: Annotated[str, StringConstraints(max_length=63)] | None = Field(None, description="Its severity label.")
    long_window: Window | None = Field(None, description="Its long window.")
    short_window: Window | None = Field(None, description="Its short window.")
    active_since: datetime | None = Field(None, description="When Prometheus saw it become active.")


class ErrorBudget(StatusModel):
    """Error budget and burn rates, read from Prometheus by a timer. Every figure was read at
    `evaluatedAt` (burn rates and alerts carry their own time too); when Prometheus cannot be
    read this block is removed rather than left to look current (see `lastErrorBudget`)."""

    sli: float | None = Field(None, ge=0, le=1, description="Good-event ratio over the compliance window (0..1).")
    remaining: float | None = Field(None, le=1, description="Share of the window's budget left (1 = untouched, below 0 = overspent).")
    remaining_minutes: float | None = Field(
        None, alias="remainingMinutes", description="Budget left as minutes of total outage over the window.")
    burn_rate_1h: float | None = Field(None, ge=0, alias="burnRate1h", description="Burn rate over 1h.")
    burn_rate_6h: float | None = Field(None, ge=0, alias="burnRate6h", description="Burn rate over 6h.")
    worst_burn_rate: float | None = Field(None, ge=0, description="Highest burn rate over the alert windows.")
    worst_burn_window: Window | None = Field(None, description="The window of worstBurnRate.")
    burn_rates: list[BurnRate] | None = Field(
        None, max_length=32, json_schema_extra=list_map("window"),
        description="Burn rate per alert window of the enabled tiers.")
    firing_alerts: list[FiringAlert] | None = Field(
        None, max_length=32, description="This SLO's alerts Prometheus reports firing (empty: none).")
    evaluated_at: datetime | None = Field(None, description="When Prometheus was queried.")
    prometheus_url: HttpUrl | None = Field(None, description="The Prometheus that was queried.")


class SLOStatus(StatusBase):
    """The generated objects and, when Prometheus answers, the budget."""

    phase: Literal["Pending", "Ready", "Degraded", "Failed"] | None = Field(
        None, description="Pending, Ready (rules generated), Degraded (some targets missing) or Failed."
    )
    generated_objects: list[ObjectRef] | None = Field(
        None, max_length=16, description="PrometheusRule, Grafana alert/dashboard ConfigMaps, ... created for this SLO."
    )
    error_budget: ErrorBudget | None = Field(None, description="Budget and burn rates; unset when Prometheus cannot be read.")
    last_error_budget: ErrorBudget | None = Field(
        None, description="The last reading, kept while Prometheus cannot be read; its evaluatedAt tells its age.")


class SLO(Resource):
    """A service level objective turned into Prometheus recording rules, burn-rate alerts and a dashboard."""

    crd = CrdInfo(
        plural="slos",
        short_names=("pslo",),
        columns=(
            PrinterColumn("Service", ".spec.service"),
            PrinterColumn("Journey", ".spec.journey"),
            PrinterColumn("Objective", ".spec.objective", type="number", description="Target, percent"),
            PrinterColumn("Window", ".spec.window"),
            PrinterColumn("Budget", ".status.errorBudget.remaining", type="number", description="Error budget left, 0..1"),
            PrinterColumn("Worst burn", ".status.errorBudget.worstBurnRate", type="number",
                          description="Highest burn rate over the alert windows (1 = on budget)"),
            PrinterColumn("Budget min", ".status.errorBudget.remainingMinutes", type="number", priority=1,
                          description="Budget left, minutes of full outage"),
            PrinterColumn("Burn 1h", ".status.errorBudget.burnRate1h", type="number", priority=1),
            READY_COLUMN,
            AGE_COLUMN,
            MESSAGE_COLUMN,
        ),
    )

    kind: Literal["SLO"] = Field("SLO", description="Always `SLO`.")
    spec: SLOSpec
    status: SLOStatus | None = None

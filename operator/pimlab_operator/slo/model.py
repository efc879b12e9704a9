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


class AlertSeverity(ApiModel):
    """One class of multi-window multi-burn-rate alerts."""

    enabled: bool = Field(True, description="Generate these alerts (default true).")
    labels: LabelMap | None = Field(None, description="Labels on the alerts; unset: severity=<page|ticket>.")
    for_: Duration | None = Field(None, alias="for", description="How long the condition must hold; unset: 2m page, 15m ticket.")


class Alerting(ApiModel):
    """Burn-rate alerts: page for fast burn (1h/5m at 14.4x, 6h/30m at 6x), ticket for slow burn."""

    page: AlertSeverity = Field(default_factory=AlertSeverity, description="Fast-burn alerts.")
    ticket: AlertSeverity = Field(default_factory=AlertSeverity, description="Slow-burn alerts (1d/2h at 3x, 3d/6h at 1x).")
    runbook_url: HttpUrl | None = Field(None, description="Runbook linked from every alert (annotation runbook_url).")


class SloGrafana(ApiModel):
    """Grafana alert rules and dashboard."""

    folder: Annotated[str, StringConstraints(min_length=1, max_length=253)] = Field(
        "SLOs", description="Grafana folder for the alert rules and dashboard (default SLOs)."
    )
    dashboard: bool = Field(True, description="Generate a dashboard ConfigMap (default true).")


class SLOSpec(ApiModel):
    """The desired objective."""

    service: ServiceName = Field(description="Lab service the SLO is about.")
    journey: Journey | None = Field(None, description="Persona journey the SLO protects; unset: the whole service.")
    description: Text | None = Field(None, description="What users feel when this SLO is missed.")
    sli: Sli = Field(description="Exactly one of ratio, latency or raw.")
    objective: float = Field(gt=0, lt=100, description="Target percentage of good events, strictly between 0 and 100, e.g. 99.9.")
    window: Window = Field("30d", description="Compliance window, e.g. 30d or 28d (default 30d).")
    alerting: Alerting = Field(default_factory=Alerting, description="Multi-window multi-burn-rate alerts.")
    grafana: SloGrafana = Field(default_factory=SloGrafana, description="Grafana folder and dashboard.")


class ErrorBudget(StatusModel):
    """Error budget and burn rates, read from Prometheus when it is reachable."""

    remaining: float | None = Field(None, le=1, description="Share of the window's budget left (1 = untouched, below 0 = overspent).")
    burn_rate_5m: float | None = Field(None, ge=0, alias="burnRate5m", description="Burn rate over 5m (1 = on budget).")
    burn_rate_1h: float | None = Field(None, ge=0, alias="burnRate1h", description="Burn rate over 1h.")
    burn_rate_6h: float | None = Field(None, ge=0, alias="burnRate6h", description="Burn rate over 6h.")
    burn_rate_3d: float | None = Field(None, ge=0, alias="burnRate3d", description="Burn rate over 3d.")
    evaluated_at: datetime | None = Field(None, description="When Prometheus was queried.")


class SLOStatus(StatusBase):
    """The generated objects and, when Prometheus answers, the budget."""

    phase: Literal["Pending", "Ready", "Degraded", "Failed"] | None = Field(
        None, description="Pending, Ready (rules generated), Degraded (some targets missing) or Failed."
    )
    generated_objects: list[ObjectRef] | None = Field(
        None, max_length=16, description="PrometheusRule, Grafana alert/dashboard ConfigMaps, ... created for this SLO."
    )
    error_budget: ErrorBudget | None = Field(None, description="Budget and burn rates; unset when Prometheus is unreachable.")


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
            PrinterColumn("Burn 1h", ".status.errorBudget.burnRate1h", type="number", priority=1),
            READY_COLUMN,
            AGE_COLUMN,
            MESSAGE_COLUMN,
        ),
    )

    kind: Literal["SLO"] = Field("SLO", description="Always `SLO`.")
    spec: SLOSpec
    status: SLOStatus | None = None

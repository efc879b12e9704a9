"""Lab: the application tier (gateway, domain services, outbox relay, projection worker) over the shards."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import ConfigDict, Field, StringConstraints, create_model, model_validator
from pydantic.alias_generators import to_snake

from api_services.catalog import COMPONENTS

from pimlab_operator.schema import (
    PROJECT_IMAGE,
    AGE_COLUMN,
    MESSAGE_COLUMN,
    READY_COLUMN,
    ApiModel,
    CrdInfo,
    HttpUrl,
    LabelSelector,
    PrinterColumn,
    Resource,
    ResourceRequirements,
    SecretKeyRef,
    ServiceName,
    StatusBase,
    StatusModel,
    cel,
    rules,
)



class Autoscaling(ApiModel):
    """A HorizontalPodAutoscaler on CPU for one service."""

    model_config = ConfigDict(
        json_schema_extra=rules(
            cel(
                "self.minReplicas <= self.maxReplicas",
                "autoscaling.minReplicas must not exceed autoscaling.maxReplicas: lower minReplicas or raise maxReplicas",
                field_path=".minReplicas",
            )
        )
    )

    min_replicas: int = Field(1, ge=1, le=100, description="Fewest replicas the HPA keeps (default 1).")
    max_replicas: int = Field(ge=1, le=100, description="Most replicas the HPA may run; >= minReplicas.")
    target_cpu: int = Field(
        80, ge=1, le=100, alias="targetCPU", description="Average CPU utilisation, percent of requests, 1..100 (default 80)."
    )

    @model_validator(mode="after")
    def _min_not_above_max(self) -> Autoscaling:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"autoscaling.minReplicas ({self.min_replicas}) must not exceed maxReplicas ({self.max_replicas})")
        return self


class ServiceSpec(ApiModel):
    """One application service: a Deployment, its Service, PDB and optional HPA."""

    replicas: int = Field(
        1, ge=0, le=100, description="Replicas when autoscaling is unset; 0 stops the service (default 1)."
    )
    resources: ResourceRequirements | None = Field(
        None, description="Container resources; unset: requests cpu 100m, memory 128Mi; limits memory 512Mi."
    )
    autoscaling: Autoscaling | None = Field(None, description="Scale on CPU with an HPA; unset: fixed replicas.")


def _service(description: str, replicas: int) -> object:
    """A service field whose default replica count the apiserver fills in as well."""
    return Field(default_factory=lambda: ServiceSpec(replicas=replicas), description=f"{description} Default replicas {replicas}.")


#: One field per component of the catalogue (api_services.catalog).
LabServices = create_model(
    "LabServices",
    __base__=ApiModel,
    __doc__="The application services; every one runs, each with its own Deployment.",
    **{to_snake(c.key): (ServiceSpec, _service(c.summary, c.replicas)) for c in COMPONENTS},
)


class AuthSpec(ApiModel):
    """How the gateway validates the callers' JWTs."""

    issuer: HttpUrl = Field(description="Expected `iss` claim, e.g. https://idp.lab.local.")
    audience: Annotated[str, StringConstraints(min_length=1, max_length=253)] = Field(
        "pim-api", description="Expected `aud` claim (default pim-api)."
    )
    jwks_uri: HttpUrl | None = Field(
        None, description="Where the signing keys are published; unset: <issuer>/.well-known/jwks.json."
    )


class GrafanaSpec(ApiModel):
    """The Grafana instance SLO alert rules and dashboards are provisioned into."""

    url: HttpUrl = Field(description="Grafana base URL.")
    api_token_secret_ref: SecretKeyRef | None = Field(
        None, description="Secret key holding a Grafana service-account token; unset: provisioning ConfigMaps only."
    )


class ObservabilitySpec(ApiModel):
    """Where the services send telemetry and where the operator reads SLO burn."""

    prometheus_url: HttpUrl | None = Field(
        None, description="Prometheus (or Mimir) query URL the operator reads error budgets from; unset: none."
    )
    otlp_endpoint: HttpUrl | None = Field(
        None, description="OTLP over HTTP endpoint for traces (Tempo's is port 4318; the services append "
                          "/v1/traces); unset: tracing export off.")
    grafana: GrafanaSpec | None = Field(None, description="Grafana to provision; unset: none.")
    service_monitor: bool = Field(
        True, description="Create a ServiceMonitor when the prometheus-operator CRD exists (default true)."
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Services' log level (default INFO).")


class LabSpec(ApiModel):
    """The desired application tier of one lab."""

    image: Annotated[str, StringConstraints(min_length=1, max_length=512)] = Field(
        PROJECT_IMAGE, description=f"Image of every service (one image for operator, services, engine). Default {PROJECT_IMAGE}."
    )
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = Field(
        "IfNotPresent", description="Pull policy of the services' containers (default IfNotPresent)."
    )
    shard_selector: LabelSelector | None = Field(
        None, description="Shards (in this namespace) that make up the shard map; unset: every Shard in the namespace."
    )
    services: LabServices = Field(default_factory=LabServices, description="Replicas, resources and autoscaling per service.")
    auth: AuthSpec | None = Field(None, description="JWT validation; unset: the gateway accepts the lab's development tokens.")
    observability: ObservabilitySpec = Field(
        default_factory=ObservabilitySpec, description="Telemetry endpoints and Prometheus/Grafana integration."
    )
    fault_injection: bool = Field(
        False, description="Let the services take injected faults for SLO drills (default false): each pod then reads"
                           " added delays and 503s from /tmp/pim-faults.json, which only `kubectl exec` writes"
                           " (docs/runbooks/slo-burn.md).")


class ServiceStatus(StatusModel):
    """One service's Deployment as last observed."""

    name: ServiceName = Field(description="Service name, as in spec.services.")
    replicas: int | None = Field(None, ge=0, description="Desired replicas (from the Deployment or HPA).")
    ready_replicas: int | None = Field(None, ge=0, description="Ready replicas.")
    ready: bool = Field(description="Whether every desired replica is ready.")


class LabStatus(StatusBase):
    """The lab as the operator last saw it."""

    phase: Literal["Pending", "Progressing", "Ready", "Degraded", "Failed"] | None = Field(
        None, description="Pending, Progressing, Ready, Degraded or Failed."
    )
    endpoints: dict[Annotated[str, StringConstraints(max_length=63)], Annotated[str, StringConstraints(max_length=2048)]] | None = Field(
        None, max_length=16, description="In-cluster URL per exposed service, e.g. `gateway: http://pim-gateway.lab.svc:8080`."
    )
    shard_map_version: Annotated[str, StringConstraints(max_length=64)] | None = Field(
        None, description="Hash of the shard-map ConfigMap's content; changes whenever slots or shards change."
    )
    shards: list[Annotated[str, StringConstraints(max_length=253)]] | None = Field(
        None, max_length=64, description="Shards in the shard map, by ordinal."
    )
    ready_services: int | None = Field(None, ge=0, description="Services whose Deployment is fully ready.")
    total_services: int | None = Field(None, ge=0, description="Services the lab runs.")
    services: list[ServiceStatus] | None = Field(
        None, max_length=16, description="Per-service readiness.", json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]}
    )


class Lab(Resource):
    """The lab's application tier: gateway, domain services, outbox relay and projection worker over the shards."""

    crd = CrdInfo(
        plural="labs",
        short_names=("plab",),
        columns=(
            PrinterColumn("Shard Map", ".status.shardMapVersion", description="Shard map version"),
            PrinterColumn("Ready Services", ".status.readyServices", type="integer"),
            PrinterColumn("Services", ".status.totalServices", type="integer"),
            PrinterColumn("Shards Ready", '.status.conditions[?(@.type=="ShardsReady")].status',
                          description="Whether every Shard in the shard map is Ready"),
            PrinterColumn("Phase", ".status.phase"),
            READY_COLUMN,
            PrinterColumn("Gateway", ".status.endpoints.gateway", priority=1),
            AGE_COLUMN,
            MESSAGE_COLUMN,
        ),
    )

    kind: Literal["Lab"] = Field("Lab", description="Always `Lab`.")
    spec: LabSpec = Field(default_factory=LabSpec)
    status: LabStatus | None = None

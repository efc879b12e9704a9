"""Pieces every kind shares: base models, CEL rule helpers, durations, references, conditions.

Field names follow Kubernetes conventions (camelCase on the wire, snake_case in Python) so the
operator writes `spec.synchronous_replicas` while users and `kubectl explain` see
`synchronousReplicas`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from pydantic.alias_generators import to_camel

from api_services.catalog import COMPONENTS

#: The API group and version of every kind; children carry `pim-sre.lab/<kind>` labels and
#: kopf keeps its state under the same prefix.
GROUP = "pim-sre.lab"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
#: The project's one image (operator, services, persona engine, PostgreSQL instance manager),
#: as users build it from the Dockerfile for kind; the local lab maps it to the image built here.
PROJECT_IMAGE = "ghcr.io/pim-sre/lab:0.1.0"

# --------------------------------------------------------------------------------------------
# CEL rules, declared next to the models they guard
# --------------------------------------------------------------------------------------------


def cel(
    rule: str,
    message: str | None = None,
    *,
    message_expression: str | None = None,
    field_path: str | None = None,
    reason: str | None = None,
) -> dict[str, str]:
    """One `x-kubernetes-validations` entry; the apiserver shows `message` when `rule` is false."""
    entry = {"rule": rule}
    if message is not None:
        entry["message"] = message
    if message_expression is not None:
        entry["messageExpression"] = message_expression
    if field_path is not None:
        entry["fieldPath"] = field_path
    if reason is not None:
        entry["reason"] = reason
    return entry


def rules(*entries: dict[str, str], **extra: Any) -> dict[str, Any]:
    """`json_schema_extra` carrying CEL rules (and any other schema keys) for a model or field."""
    return {"x-kubernetes-validations": list(entries), **extra}


def list_map(*keys: str) -> dict[str, Any]:
    """Schema keys that make a list a map keyed by `keys`: duplicates refused, SSA merges by key."""
    return {"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": list(keys)}


LIST_SET: dict[str, Any] = {"x-kubernetes-list-type": "set"}

# --------------------------------------------------------------------------------------------
# Base models
# --------------------------------------------------------------------------------------------


class ApiModel(BaseModel):
    """What users write: unknown fields are refused so a typo fails here, not silently later."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")

    def to_k8s(self) -> dict[str, Any]:
        """The object as the apiserver wants it: camelCase keys, unset fields left out."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class StatusModel(ApiModel):
    """What the operator writes: extra keys (e.g. other writers' fields) are tolerated on read."""

    model_config = ConfigDict(extra="ignore")


# --------------------------------------------------------------------------------------------
# Scalar types
# --------------------------------------------------------------------------------------------

DURATION_PATTERN = r"^([0-9]+(ms|s|m|h))+$"
WINDOW_PATTERN = r"^([0-9]+(m|h|d|w))+$"
QUANTITY_PATTERN = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
    r"(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
CRON_PATTERN = r"^(@(yearly|annually|monthly|weekly|daily|midnight|hourly)|(\S+\s+){4}\S+)$"
HTTP_URL_PATTERN = r"^https?://[^\s]+$"

#: A Go-style duration (`200ms`, `5s`, `1m30s`, `2h`): CEL's `duration()` parses it too.
Duration = Annotated[str, StringConstraints(pattern=DURATION_PATTERN, max_length=32)]

_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def duration_seconds(duration: str) -> float:
    """Seconds in a duration such as 300ms, 1m30s (Go) or 6h, 3d, 1w (Prometheus windows)."""
    total, digits, i = 0.0, "", 0
    while i < len(duration):
        if duration[i].isdigit():
            digits += duration[i]
            i += 1
            continue
        unit = "ms" if duration.startswith("ms", i) else duration[i]
        total += int(digits) * _DURATION_UNITS[unit]
        digits, i = "", i + len(unit)
    return total
#: A Prometheus-style window of minutes to weeks (`30d`, `28d`, `6h`, `1w`).
Window = Annotated[str, StringConstraints(pattern=WINDOW_PATTERN, max_length=32)]
#: A Kubernetes quantity (`500m`, `2Gi`, `1`): a string or an integer, like Pod resources.
Quantity = int | Annotated[str, StringConstraints(pattern=QUANTITY_PATTERN, max_length=64)]
#: The name of an object in the same namespace.
ObjectName = Annotated[str, StringConstraints(pattern=DNS_SUBDOMAIN_PATTERN, max_length=253)]
#: A name that must also be a DNS label (it becomes part of child object names).
ShortName = Annotated[str, StringConstraints(pattern=DNS_LABEL_PATTERN, max_length=63)]
#: A cron schedule (five fields, or a macro such as `@hourly`); empty means "run once".
CronSchedule = Annotated[str, StringConstraints(pattern=r"^$|" + CRON_PATTERN, max_length=100)]
HttpUrl = Annotated[str, StringConstraints(pattern=HTTP_URL_PATTERN, max_length=2048)]
#: Free text shown to humans (reasons, details); bounded so CEL cost stays estimable.
Text = Annotated[str, StringConstraints(max_length=1024)]
LabelMap = Annotated[
    dict[Annotated[str, StringConstraints(max_length=317)], Annotated[str, StringConstraints(max_length=63)]],
    Field(max_length=64),
]

#: The journeys the persona engine can run; SLOs name the same journeys.
Journey = Literal[
    "registerPatient", "bookEncounter", "reviewEncounter", "checkBilling", "documentEncounter", "submitClaim", "readKpis"
]
#: The lab's application services (keys of `Lab.spec.services`).
ServiceName = Literal[tuple(component.key for component in COMPONENTS)]

# --------------------------------------------------------------------------------------------
# References and selectors
# --------------------------------------------------------------------------------------------


class LocalObjectRef(ApiModel):
    """A reference to an object in the same namespace."""

    name: Annotated[str, StringConstraints(pattern=r"^$|" + DNS_SUBDOMAIN_PATTERN, max_length=253)] = Field(
        description="Name of the object in this namespace; empty means none."
    )


class SecretKeyRef(ApiModel):
    """One key of a Secret in the same namespace."""

    name: ObjectName = Field(description="Name of the Secret in this namespace.")
    key: Annotated[str, StringConstraints(min_length=1, max_length=253)] = Field(
        description="Key within the Secret whose value is used."
    )


class ObjectRef(StatusModel):
    """A child object the operator created, so an SRE can `kubectl get` it."""

    api_version: Annotated[str, StringConstraints(max_length=253)] = Field(
        description="apiVersion of the object, e.g. `monitoring.coreos.com/v1`."
    )
    kind: Annotated[str, StringConstraints(max_length=63)] = Field(description="Kind of the object.")
    name: Annotated[str, StringConstraints(max_length=253)] = Field(description="Name of the object.")
    namespace: Annotated[str, StringConstraints(max_length=63)] | None = Field(
        None, description="Namespace of the object; unset for cluster-scoped objects."
    )


class LabelSelectorRequirement(ApiModel):
    """One set-based requirement, as in Kubernetes label selectors."""

    key: Annotated[str, StringConstraints(min_length=1, max_length=317)] = Field(
        description="Label key the requirement applies to."
    )
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"] = Field(
        description="How the key relates to `values`."
    )
    values: list[Annotated[str, StringConstraints(max_length=63)]] | None = Field(
        None,
        max_length=64,
        description="Values for In and NotIn; must be empty for Exists and DoesNotExist.",
    )


class LabelSelector(ApiModel):
    """A Kubernetes label selector; an empty selector selects everything."""

    match_labels: LabelMap | None = Field(
        None, description="Labels an object must carry, all of them (logical AND)."
    )
    match_expressions: list[LabelSelectorRequirement] | None = Field(
        None, max_length=16, description="Set-based requirements, all of which must hold."
    )


class ResourceRequirements(ApiModel):
    """Compute resources of a container, as in a Pod spec."""

    requests: dict[Annotated[str, StringConstraints(max_length=63)], Quantity] | None = Field(
        None, max_length=8, description="Minimum resources the scheduler reserves, e.g. `{cpu: 500m, memory: 1Gi}`."
    )
    limits: dict[Annotated[str, StringConstraints(max_length=63)], Quantity] | None = Field(
        None, max_length=8, description="Maximum resources the container may use, e.g. `{memory: 2Gi}`."
    )


# --------------------------------------------------------------------------------------------
# Status pieces
# --------------------------------------------------------------------------------------------


class Condition(StatusModel):
    """A Kubernetes-convention condition: `Ready` always, `Progressing`/`Degraded` where useful."""

    type: Annotated[str, StringConstraints(pattern=r"^[A-Z][A-Za-z0-9]*$", max_length=316)] = Field(
        description="Condition type in CamelCase: Ready, Progressing, Degraded, ..."
    )
    status: Literal["True", "False", "Unknown"] = Field(description="Whether the condition holds.")
    reason: Annotated[
        str, StringConstraints(pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$", max_length=1024)
    ] = Field(description="One CamelCase word a program can match on, e.g. `PrimaryUnhealthy`.")
    message: Annotated[str, StringConstraints(max_length=32768)] | None = Field(
        None, description="What happened, for humans; may be empty."
    )
    observed_generation: int | None = Field(
        None, ge=0, description="metadata.generation the condition was computed from."
    )
    last_transition_time: datetime = Field(description="When `status` last changed (not when it was last checked).")


class StatusBase(StatusModel):
    """Fields every kind's status carries; each kind adds its `phase` enum and its own facts."""

    observed_generation: int | None = Field(
        None, ge=0, description="metadata.generation the operator last acted on; older than the object's generation means a change is not yet processed."
    )
    conditions: list[Condition] | None = Field(
        None,
        max_length=16,
        description="Latest observations, one per type: Ready (summary), Progressing, Degraded.",
        json_schema_extra=list_map("type"),
    )
    phase_reason: Text | None = Field(None, description="Why the object is in its phase, for humans.")


class ObjectMeta(BaseModel):
    """The subset of metadata the operator reads; everything else is kept as is."""

    model_config = ConfigDict(extra="allow", alias_generator=to_camel, populate_by_name=True)

    name: str | None = None
    namespace: str | None = None
    labels: dict[str, str] | None = None
    annotations: dict[str, str] | None = None
    generation: int | None = None
    uid: str | None = None
    resource_version: str | None = None


# --------------------------------------------------------------------------------------------
# Resources and their CRD metadata
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PrinterColumn:
    """One `kubectl get` column (`additionalPrinterColumns`)."""

    name: str
    json_path: str
    type: str = "string"
    description: str = ""
    priority: int = 0

    def to_k8s(self) -> dict[str, Any]:
        column: dict[str, Any] = {"name": self.name, "type": self.type, "jsonPath": self.json_path}
        if self.description:
            column["description"] = self.description
        if self.priority:
            column["priority"] = self.priority
        return column


READY_COLUMN = PrinterColumn(
    "Ready", '.status.conditions[?(@.type=="Ready")].status', description="Whether the object is ready"
)
AGE_COLUMN = PrinterColumn("Age", ".metadata.creationTimestamp", type="date")
MESSAGE_COLUMN = PrinterColumn(
    "Message",
    '.status.conditions[?(@.type=="Ready")].message',
    description="Why the object is (not) ready",
    priority=1,
)


@dataclass(frozen=True)
class CrdInfo:
    """What a CRD needs beyond the schema: names, columns and rules that see metadata."""

    plural: str
    short_names: tuple[str, ...]
    columns: tuple[PrinterColumn, ...]
    #: CEL rules at the root of the schema: the only place where `self.metadata.name` is visible.
    root_rules: tuple[dict[str, str], ...] = field(default=())
    categories: tuple[str, ...] = ("pimlab",)


class Resource(BaseModel):
    """A whole object of this API group; subclasses set `kind`, `spec`, `status` and `crd`."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")

    crd: ClassVar[CrdInfo]

    api_version: Literal[API_VERSION] = Field(API_VERSION, description=f"Always `{API_VERSION}`.")
    metadata: ObjectMeta = Field(default_factory=ObjectMeta, description="Standard object metadata.")

    def to_k8s(self) -> dict[str, Any]:
        """The object as the apiserver wants it: camelCase keys, unset fields left out."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)

"""Shard: one replicated database (SQL Server availability group or PostgreSQL streaming
replication) holding a range of patient hash slots."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import ConfigDict, Field, StringConstraints, model_validator

from pimlab_operator.schema import (
    PROJECT_IMAGE,
    AGE_COLUMN,
    MESSAGE_COLUMN,
    READY_COLUMN,
    ApiModel,
    CrdInfo,
    LocalObjectRef,
    PrinterColumn,
    Quantity,
    Resource,
    ResourceRequirements,
    StatusBase,
    StatusModel,
    cel,
    rules,
)

#: Patient ids hash into this many slots; shards own disjoint, contiguous ranges of them.
SLOT_COUNT = 1024
MAX_REPLICAS = 5
#: The default image per engine: Microsoft's SQL Server, or the project's own image (Debian's
#: PostgreSQL and the `pimlab instance` manager).
DEFAULT_IMAGES = {"sqlserver": "mcr.microsoft.com/mssql/server:2022-latest", "postgres": PROJECT_IMAGE}
PodName = Annotated[str, StringConstraints(max_length=253)]


class SlotRange(ApiModel):
    """The hash slots [start, end] (inclusive) this shard owns."""

    model_config = ConfigDict(
        json_schema_extra=rules(
            cel(
                "self.start <= self.end",
                "slots.start must not be greater than slots.end: swap them or fix the range",
                field_path=".start",
            )
        )
    )

    start: int = Field(ge=0, le=SLOT_COUNT - 1, description="First slot owned, 0..1023.")
    end: int = Field(ge=0, le=SLOT_COUNT - 1, description="Last slot owned (inclusive), 0..1023, >= start.")

    @model_validator(mode="after")
    def _start_not_after_end(self) -> SlotRange:
        if self.start > self.end:
            raise ValueError(f"slots.start ({self.start}) must not be greater than slots.end ({self.end})")
        return self


class ShardStorage(ApiModel):
    """The persistent volume each SQL Server replica gets."""

    size: Quantity = Field("20Gi", description="Volume size per replica (default 20Gi).")
    storage_class_name: Annotated[str, StringConstraints(max_length=253)] | None = Field(
        None, description="StorageClass of the volumes; unset uses the cluster's default class."
    )


class FailoverPolicy(ApiModel):
    """How the operator, as the availability group's cluster manager, reacts to a lost primary."""

    automatic: bool = Field(True, description="Promote a secondary when the primary is unhealthy (default true).")
    unhealthy_after_seconds: int = Field(
        30, ge=5, le=3600, description="Seconds the primary must stay unhealthy before failing over (default 30)."
    )
    allow_data_loss: bool = Field(
        False,
        description="Allow promoting an asynchronous secondary when no synchronous one is up to date"
        " (forced failover, may lose committed transactions). Default false.",
    )


class ShardSpec(ApiModel):
    """The desired availability group of one shard."""

    model_config = ConfigDict(
        json_schema_extra=rules(
            cel(
                "!has(self.synchronousReplicas) || self.synchronousReplicas <= self.replicas - 1",
                "synchronousReplicas must be at most replicas-1 (a synchronous secondary needs a replica of its own):"
                " lower spec.synchronousReplicas or raise spec.replicas",
                field_path=".synchronousReplicas",
            ),
            cel(
                "!has(self.synchronousReplicas) || self.synchronousReplicas > 0 || self.replicas == 1 ||"
                " (has(self.failover) && (!self.failover.automatic || self.failover.allowDataLoss))",
                "synchronousReplicas: 0 leaves no replica that is safe to promote, so automatic failover would"
                " always be refused: set synchronousReplicas >= 1, or failover.automatic: false, or"
                " failover.allowDataLoss: true",
                field_path=".synchronousReplicas",
            ),
        )
    )

    engine: Literal["sqlserver", "postgres"] = Field(
        "sqlserver",
        description="Database engine: `sqlserver` (Always On availability group, CLUSTER_TYPE=EXTERNAL) or"
        " `postgres` (PostgreSQL streaming replication with a synchronous quorum, run by `pimlab instance`)."
        " Immutable: the data does not move between engines.",
        json_schema_extra=rules(cel("self == oldSelf", "engine is immutable: create a new Shard for another engine")),
    )
    ordinal: int = Field(
        ge=0,
        le=63,
        description="Position of the shard in the shard map, 0..63. Immutable: renumbering would move patients.",
        json_schema_extra=rules(
            cel("self == oldSelf", "ordinal is immutable: create a new Shard instead of renumbering this one")
        ),
    )
    slots: SlotRange = Field(
        description="Hash slots [start, end] of 1024 this shard owns; the Lab refuses overlapping shards."
    )
    replicas: int = Field(
        3, ge=1, le=MAX_REPLICAS, description="Database replicas: 1 primary + (replicas-1) secondaries, 1..5 (default 3)."
    )
    synchronous_replicas: int | None = Field(
        None,
        ge=0,
        le=MAX_REPLICAS - 1,
        description="Secondaries a commit waits for, at most replicas-1 (SQL Server:"
        " REQUIRED_SYNCHRONIZED_SECONDARIES_TO_COMMIT with that many synchronous-commit replicas;"
        " PostgreSQL: synchronous_standby_names = 'ANY k (every standby)')."
        " Unset: 1 when replicas > 1, else 0. Automatic failover without data loss needs at least 1.",
    )
    image: Annotated[str, StringConstraints(min_length=1, max_length=512)] | None = Field(
        None,
        description="Container image. Unset: mcr.microsoft.com/mssql/server:2022-latest for sqlserver, the"
        " project's image (PostgreSQL 15 and the instance manager) for postgres.",
    )
    edition: Literal["Developer", "Express", "Evaluation", "Standard", "Enterprise"] = Field(
        "Developer", description="SQL Server edition (MSSQL_PID), default Developer; ignored by postgres."
    )
    storage: ShardStorage = Field(default_factory=ShardStorage, description="Persistent volume per replica.")
    resources: ResourceRequirements | None = Field(
        None, description="Resources of the SQL Server container; unset: requests cpu 1, memory 2Gi; limits memory 4Gi."
    )
    failover: FailoverPolicy = Field(default_factory=FailoverPolicy, description="Automatic failover policy.")
    primary: PodName | None = Field(
        None,
        description="Set to a pod of this shard (e.g. `shard-00-1`) to ask for a planned switchover;"
        " empty or unset lets the operator keep or choose the primary.",
    )
    credentials_secret_ref: LocalObjectRef | None = Field(
        None,
        description="Secret with keys `username` and `password` for the SQL login (SQL Server and the"
        " services read both); unset or empty name: the operator"
        " generates `<shard>-credentials` (never printed).",
    )

    def effective_image(self) -> str:
        return self.image or DEFAULT_IMAGES[self.engine]

    def synchronous_replica_count(self) -> int:
        """The effective number of synchronous secondaries, applying the documented default."""
        if self.synchronous_replicas is not None:
            return self.synchronous_replicas
        return 1 if self.replicas > 1 else 0

    @model_validator(mode="after")
    def _synchronous_fit_replicas(self) -> ShardSpec:
        if self.synchronous_replicas is not None and self.synchronous_replicas > self.replicas - 1:
            raise ValueError(
                f"synchronousReplicas ({self.synchronous_replicas}) must be at most replicas-1 ({self.replicas - 1})"
            )
        if (self.synchronous_replicas == 0 and self.replicas > 1 and self.failover.automatic
                and not self.failover.allow_data_loss):
            raise ValueError("synchronousReplicas: 0 leaves no replica that is safe to promote: set synchronousReplicas"
                             " >= 1, or failover.automatic: false, or failover.allowDataLoss: true")
        return self


class ReplicaStatus(StatusModel):
    """One database pod as the failover manager sees it."""

    pod: PodName = Field(description="Pod name, e.g. `shard-00-1`.")
    role: Literal["primary", "secondary", "unknown"] = Field(description="Availability-group role.")
    ready: bool = Field(description="Whether the pod is Ready and its database online.")
    synchronization_state: Annotated[str, StringConstraints(max_length=64)] | None = Field(
        None, description="SQL Server synchronization_state_desc: SYNCHRONIZED, SYNCHRONIZING, NOT SYNCHRONIZING, ..."
    )
    synchronous_commit: bool | None = Field(None, description="Whether the replica is in synchronous-commit mode.")
    lag_seconds: float | None = Field(
        None, ge=0, description="Seconds the secondary's redo lags behind the primary (secondary_lag_seconds)."
    )
    lag_bytes: int | None = Field(
        None, ge=0, description="PostgreSQL: bytes of WAL the standby has not flushed yet (primary's flush LSN - its flush LSN)."
    )
    streaming: bool | None = Field(None, description="Whether the secondary streams from the current primary now.")
    position: int | None = Field(
        None, ge=0, description="WAL position (PostgreSQL LSN in bytes, SQL Server sequence number) last observed."
    )


class FailoverRecord(StatusModel):
    """One change of primary, with its measured duration."""

    from_: PodName = Field(alias="from", description="Primary before the failover.")
    to: PodName = Field(description="Primary after the failover.")
    reason: Annotated[str, StringConstraints(max_length=128)] = Field(
        description="CamelCase cause: PrimaryUnhealthy, PlannedSwitchover, ChaosExperiment, ..."
    )
    planned: bool | None = Field(None, description="True for a switchover asked for through spec.primary.")
    data_loss: bool | None = Field(None, description="True when a forced failover may have lost transactions.")
    primary_lost_at: datetime | None = Field(None, description="When the primary was first seen unhealthy.")
    started_at: datetime = Field(description="When the operator decided to fail over.")
    completed_at: datetime | None = Field(
        None, description="When the new primary's first write was acknowledged by the synchronous quorum."
    )
    duration_seconds: float | None = Field(None, ge=0, description="completedAt - startedAt, in seconds.")
    outage_seconds: float | None = Field(
        None, ge=0, description="completedAt - primaryLostAt: the writes' outage, unhealthyAfterSeconds included."
    )


class FailoverProgress(StatusModel):
    """A failover that has started and not yet completed; the operator resumes it after a restart."""

    from_: PodName = Field(alias="from", description="Primary being replaced.")
    reason: Annotated[str, StringConstraints(max_length=128)] = Field(description="PrimaryUnhealthy or PlannedSwitchover.")
    started_at: datetime = Field(description="When the operator decided to fail over.")


class RollingUpdateStatus(StatusModel):
    """The rollout of a changed pod template: standbys first, a switchover, the old primary last."""

    revision: Annotated[str, StringConstraints(max_length=253)] | None = Field(
        None, description="The StatefulSet's update revision: the template every pod should run."
    )
    updated_replicas: int | None = Field(None, ge=0, description="Pods running that revision.")
    outdated_pods: list[PodName] | None = Field(
        None, max_length=MAX_REPLICAS, description="Pods still on an older revision; absent once the rollout is done."
    )
    reason: Annotated[str, StringConstraints(max_length=64)] | None = Field(
        None,
        description="Pending (no revision yet), UpToDate, Paused (a failover or an unhealthy primary),"
        " WaitingForReplicas, RestartingStandby, SwitchingOver or RestartingPrimary (only when no synchronous"
        " standby can take over).",
    )
    message: Annotated[str, StringConstraints(max_length=1024)] | None = Field(None, description="The step, in words.")
    switchover_to: PodName | None = Field(
        None, description="The updated standby the rollout switches over to; replaces spec.primary until it is done."
    )


class ShardStatus(StatusBase):
    """What the operator observed; `currentPrimary != targetPrimary` means a failover is in progress."""

    phase: Literal["Pending", "Bootstrapping", "Ready", "FailingOver", "Degraded", "Failed"] | None = Field(
        None, description="Pending, Bootstrapping, Ready, FailingOver, Degraded or Failed."
    )
    engine: Literal["sqlserver", "postgres"] | None = Field(None, description="The engine the replicas run.")
    current_primary: PodName | None = Field(None, description="Pod that is primary now.")
    current_primary_timestamp: datetime | None = Field(None, description="When currentPrimary last changed.")
    target_primary: PodName | None = Field(None, description="Pod the operator is making primary.")
    target_primary_timestamp: datetime | None = Field(None, description="When targetPrimary last changed.")
    primary_unhealthy_since: datetime | None = Field(
        None, description="Since when the primary has been unhealthy; failover starts unhealthyAfterSeconds later."
    )
    failover_in_progress: FailoverProgress | None = Field(
        None, description="The failover under way (fencing, promoting, waiting for the first write), if any."
    )
    ready_replicas: int | None = Field(None, ge=0, description="Replicas that are Ready and synchronized or primary.")
    replicas: list[ReplicaStatus] | None = Field(
        None, max_length=MAX_REPLICAS, description="Each replica's role and synchronization state."
    )
    failover_count: int | None = Field(None, ge=0, description="Failovers since the shard was created.")
    last_failover: FailoverRecord | None = Field(None, description="The most recent failover.")
    failover_history: list[FailoverRecord] | None = Field(
        None, max_length=20, description="The last 20 failovers, oldest first."
    )
    credentials_secret_name: Annotated[str, StringConstraints(max_length=253)] | None = Field(
        None, description="Secret holding the database login (its values are never shown in status)."
    )
    rolling_update: RollingUpdateStatus | None = Field(
        None, description="The rollout of the pods' template: which pods are outdated and the next step."
    )


class Shard(Resource):
    """A replicated database (1 primary + N secondaries; SQL Server AG or PostgreSQL) owning a range of patient hash slots."""

    crd = CrdInfo(
        plural="shards",
        short_names=("shd",),
        columns=(
            PrinterColumn("Engine", ".spec.engine", description="sqlserver or postgres"),
            PrinterColumn("Primary", ".status.currentPrimary", description="Current primary pod"),
            PrinterColumn("Replicas", ".spec.replicas", type="integer", description="Desired replicas"),
            PrinterColumn("Ready Replicas", ".status.readyReplicas", type="integer", description="Ready replicas"),
            PrinterColumn("Phase", ".status.phase"),
            READY_COLUMN,
            PrinterColumn("Failovers", ".status.failoverCount", type="integer", priority=1),
            PrinterColumn("Slot Start", ".spec.slots.start", type="integer", priority=1),
            PrinterColumn("Slot End", ".spec.slots.end", type="integer", priority=1),
            AGE_COLUMN,
            MESSAGE_COLUMN,
        ),
        root_rules=(
            cel(
                "!has(self.spec.primary) || self.spec.primary == '' ||"
                " (self.spec.primary.startsWith(self.metadata.name + '-') &&"
                " self.spec.primary.substring(size(self.metadata.name) + 1).matches('^[0-9]$') &&"
                " int(self.spec.primary.substring(size(self.metadata.name) + 1)) < self.spec.replicas)",
                "spec.primary must name a pod of this shard (<shard name>-<0..replicas-1>), or be empty",
                field_path=".spec.primary",
            ),
        ),
    )

    kind: Literal["Shard"] = Field("Shard", description="Always `Shard`.")
    spec: ShardSpec
    status: ShardStatus | None = None

    @model_validator(mode="after")
    def _primary_is_own_pod(self) -> Shard:
        primary, name = self.spec.primary, self.metadata.name
        if primary and name:
            suffix = primary[len(name) + 1 :] if primary.startswith(name + "-") else ""
            if not (len(suffix) == 1 and suffix.isdigit() and int(suffix) < self.spec.replicas):
                raise ValueError(f"spec.primary must name a pod of this shard, {name}-0 .. {name}-{self.spec.replicas - 1}")
        return self

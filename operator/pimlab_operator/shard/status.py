"""What a Shard reports, computed purely from its spec, its recorded status and what the
cluster and the failover pass observed; and what the failover manager remembers in status.

A sqlserver Shard's status says its availability group is not bootstrapped until the operator
has created it (step.py, bootstrap.py): `shard_status`. From then on, as for postgres, status
comes from a failover pass: `failover_status`.
"""

from __future__ import annotations

from datetime import datetime

from pimlab_operator.conditions import Condition
from pimlab_operator.objects import pod_ready
from pimlab_operator.shard.desired import (
    ROLE_LABEL,
    SWITCHOVER_ANNOTATION,
    credentials_secret_name,
    generates_credentials,
    own_pods,
    pod_names,
)
from pimlab_operator.shard.failover import Memory, Policy
from pimlab_operator.shard.failover_pass import PassResult
from pimlab_operator.shard.model import (
    FailoverProgress,
    FailoverRecord,
    ReplicaStatus,
    RollingUpdateStatus,
    ShardSpec,
    ShardStatus,
)
from pimlab_operator.shard.rollout import Rollout

AG_NOT_BOOTSTRAPPED = ("the availability group is not bootstrapped yet: the operator creates it once it "
                       "can log in to the pods (pods on simulated kwok nodes run nothing)")
#: status.failoverHistory keeps this many records, oldest first.
HISTORY_LENGTH = 20


def recorded(shard: dict) -> ShardStatus:
    """The status the operator wrote last (ShardStatus ignores other writers' keys)."""
    return ShardStatus.model_validate(shard.get("status") or {})


def failover_identity(record: FailoverRecord) -> tuple[str, datetime]:
    """What makes two records the same failover: the primary it replaced and when it started
    (a pass that completes it again after a lost status write records a new completedAt)."""
    return record.from_, record.started_at


def completed_since(before: ShardStatus, after: ShardStatus) -> list[FailoverRecord]:
    """The failovers `after` records that `before` does not: the ones a status write completes.
    Both come from the object, never from the operator's memory, so no resync and no restarted
    operator finds the same failover new twice."""
    known = {failover_identity(r) for r in [*(before.failover_history or []), *filter(None, [before.last_failover])]}
    return [r for r in after.failover_history or [] if failover_identity(r) not in known]


def rollout_status(rollout: Rollout) -> RollingUpdateStatus:
    """status.rollingUpdate."""
    return RollingUpdateStatus(revision=rollout.revision, updated_replicas=rollout.updated,
                               outdated_pods=list(rollout.outdated) or None, reason=rollout.reason,
                               message=rollout.message[:1024], switchover_to=rollout.switchover_to)


def _role(labels: dict) -> str:
    role = labels.get(ROLE_LABEL)
    return role if role in ("primary", "secondary") else "unknown"


def _unschedulable(pod: dict) -> str | None:
    for condition in (pod.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
            return condition.get("message") or condition.get("reason") or "unschedulable"
    return None


def shard_status(shard: dict, spec: ShardSpec, statefulset: dict | None, pods: list[dict],
                 credentials_missing: bool = False, rollout: Rollout | None = None
                 ) -> tuple[ShardStatus, list[Condition]]:
    """Status and conditions from the StatefulSet and its pods, before the availability group
    exists."""
    name = shard["metadata"]["name"]
    wanted = spec.replicas
    own = own_pods(name, spec, pods)
    replicas = [ReplicaStatus(pod=p["metadata"]["name"], role=_role(p["metadata"].get("labels") or {}),
                              ready=pod_ready(p)) for p in own]
    ready = sum(1 for r in replicas if r.ready and r.role != "unknown")
    primaries = [r.pod for r in replicas if r.role == "primary"]
    current = primaries[0] if primaries else recorded(shard).current_primary
    target = spec.primary or current or f"{name}-0"
    reasons: dict[str, list[str]] = {}
    for p in own:
        if _unschedulable(p):
            reasons.setdefault(_unschedulable(p), []).append(p["metadata"]["name"])
    stuck = [f"{', '.join(names)}: {reason}" for reason, names in reasons.items()]
    failed = [p["metadata"]["name"] for p in own if (p.get("status") or {}).get("phase") == "Failed"]
    rolling = bool(rollout and rollout.in_progress)
    secret = credentials_secret_name(name, spec)

    if credentials_missing:
        degraded = Condition(
            "Degraded", True, "CredentialsSecretMissing",
            f"Secret {secret} is missing and SQL Server already uses its password: restore the "
            "Secret (it is not regenerated), or delete the StatefulSet and its volumes to start "
            "the shard over" if generates_credentials(spec) else
            f"Secret {secret} named by spec.credentialsSecretRef does not exist: create it with "
            "keys username and password")
    elif failed or stuck:
        degraded = Condition("Degraded", True, "PodsFailed" if failed else "PodsUnschedulable",
                             "; ".join(([f"{p} failed" for p in failed] + stuck)[:3]))
    else:
        degraded = Condition("Degraded", False, "PodsHealthy", f"{len(own)}/{wanted} pods exist, none failed")
    if statefulset is None:
        phase, reason, message = "Pending", "StatefulSetMissing", "the StatefulSet is not created yet"
    elif ready < wanted or rolling:
        phase, reason = "Pending", "PodsNotReady"
        message = f"{ready}/{wanted} SQL Server pods ready" + (f"; {degraded.message}" if degraded.status else "")
    else:
        phase, reason = "Bootstrapping", "AvailabilityGroupNotBootstrapped"
        message = f"{ready}/{wanted} SQL Server pods ready; {AG_NOT_BOOTSTRAPPED}"
    progressing = Condition("Progressing", ready < wanted or rolling or current != target,
                            "RollingOut" if (ready < wanted or rolling) else
                            ("PrimaryChangePending" if current != target else "PodsUpToDate"),
                            f"{ready}/{wanted} pods ready, primary {current or 'none'} -> target {target}")
    status = ShardStatus(
        phase=phase,
        phase_reason=message[:1024],
        current_primary=current,
        target_primary=target,
        ready_replicas=ready,
        replicas=replicas,
        credentials_secret_name=secret,
        rolling_update=rollout_status(rollout) if rollout else None,
    )
    return status, [Condition("Ready", False, reason, message), progressing, degraded]


# --------------------------------------------------------------------------------------------
# status from one failover pass (shard/failover_pass.py): postgres, and sqlserver once its AG exists
# --------------------------------------------------------------------------------------------

def memory_from_status(shard: dict, spec: ShardSpec) -> Memory:
    """What the previous pass left in status: the failover manager's memory across restarts."""
    previous = recorded(shard)
    progress = previous.failover_in_progress
    # status.engine is written only by a failover pass: before that, currentPrimary is a guess
    return Memory(current_primary=previous.current_primary if previous.engine == spec.engine else None,
                  unhealthy_since=previous.primary_unhealthy_since,
                  failover_started_at=progress.started_at if progress else None,
                  failover_from=progress.from_ if progress else None,
                  failover_reason=progress.reason if progress else None)


def policy_of(shard: dict, spec: ShardSpec) -> Policy:
    """While a rolling update runs, its switchover target (or none) replaces spec.primary and the
    annotation: a pin to an outdated pod would switch back to it before it could be restarted."""
    annotations = shard["metadata"].get("annotations") or {}
    rolling = recorded(shard).rolling_update
    if rolling and rolling.outdated_pods:
        planned = rolling.switchover_to
    else:
        planned = spec.primary or annotations.get(SWITCHOVER_ANNOTATION) or None
    return Policy(automatic=spec.failover.automatic, unhealthy_after_seconds=spec.failover.unhealthy_after_seconds,
                  allow_data_loss=spec.failover.allow_data_loss,
                  synchronous_required=spec.synchronous_replica_count(), planned_primary=planned)


def failover_status(shard: dict, spec: ShardSpec, statefulset: dict | None, pods: list[dict],
                    result: PassResult | None, details: dict[str, dict], now: datetime,
                    credentials_missing: bool = False, unreachable_reason: str | None = None,
                    rollout: Rollout | None = None) -> tuple[ShardStatus, list[Condition]]:
    """Status of a Shard after a failover pass (None: no pass could run): every postgres Shard,
    and a sqlserver one once its availability group exists. `details`: per pod, the driver's
    extra ReplicaStatus fields (by field name)."""
    name = shard["metadata"]["name"]
    previous = recorded(shard)
    wanted = spec.replicas
    memory = result.memory if result else memory_from_status(shard, spec)
    decision = result.decision if result else None
    observed = {o.pod: o for o in (result.observations if result else [])}
    own = {p["metadata"]["name"]: p for p in own_pods(name, spec, pods)}
    replicas = []
    for pod in pod_names(name, wanted):
        o = observed.get(pod)
        fields = {"pod": pod, "role": _role((own.get(pod) or {}).get("metadata", {}).get("labels") or {}),
                  "ready": bool(o and o.reachable and o.healthy and (o.role == "primary" or o.streaming))}
        if o and o.reachable:
            fields.update(synchronous_commit=o.synchronous, streaming=o.streaming if o.role == "standby" else None,
                          position=o.position, synchronization_state=o.role)
        fields.update({k: v for k, v in (details.get(pod) or {}).items() if v is not None})
        replicas.append(ReplicaStatus(**fields))
    ready = sum(1 for r in replicas if r.ready)
    primaries = [r.pod for r in replicas if r.role == "primary"]
    current = memory.current_primary
    target = (decision.target_primary if decision and decision.target_primary else None) or current

    failovers = previous.failover_count or 0
    history = list(previous.failover_history or [])
    last = previous.last_failover
    if result and result.completed:
        failovers += 1
        last = result.completed
        history = (history + [last])[-HISTORY_LENGTH:]

    if credentials_missing:
        phase, reason = "Degraded", "CredentialsSecretMissing"
        message = (f"Secret {credentials_secret_name(name, spec)} is missing and PostgreSQL already uses its "
                   "password: restore the Secret (it is not regenerated)")
    elif statefulset is None:
        phase, reason, message = "Pending", "StatefulSetMissing", "the StatefulSet is not created yet"
    elif len(primaries) > 1:
        phase, reason = "Degraded", "MultiplePrimaries"
        message = f"more than one pod is labelled primary ({', '.join(primaries)}): fencing all but {current}"
    elif decision is None or (not observed or not any(o.reachable for o in observed.values())):
        stuck = [f"{p}: {_unschedulable(pod)}" for p, pod in own.items() if _unschedulable(pod)]
        phase, reason = "Pending", "InstancesUnreachable"
        message = unreachable_reason or (f"no instance manager answers ({len(own)}/{wanted} pods exist)"
                                         + (f"; {'; '.join(stuck[:3])}" if stuck else ""))
    else:
        phase, reason, message = decision.phase, decision.reason, decision.message
    ready_ok = phase == "Ready"
    rolling = bool(rollout and rollout.in_progress)
    degraded = phase in ("Degraded", "Failed") or bool(decision and decision.refused)
    conditions = [
        Condition("Ready", ready_ok, reason if not ready_ok else "Healthy",
                  message or f"{current} is primary; {ready}/{wanted} replicas streaming"),
        Condition("Progressing", phase in ("FailingOver", "Bootstrapping", "Pending") or current != target or rolling,
                  reason if phase in ("FailingOver", "Bootstrapping") else
                  ("PrimaryChangePending" if current != target else "RollingUpdate" if rolling else "Stable"),
                  f"primary {current or 'none'} -> target {target or 'none'}"
                  + (f"; {rollout.message}" if rolling else "")),
        Condition("Degraded", degraded, reason if degraded else "ReplicasHealthy",
                  message if degraded else f"{ready}/{wanted} replicas ready"),
    ]
    status = ShardStatus(
        engine=spec.engine,
        phase=phase,
        phase_reason=(message or reason)[:1024],
        current_primary=current,
        current_primary_timestamp=now if current != previous.current_primary else
        previous.current_primary_timestamp or (now if current else None),
        target_primary=target,
        target_primary_timestamp=now if target != previous.target_primary else
        previous.target_primary_timestamp or (now if target else None),
        primary_unhealthy_since=memory.unhealthy_since,
        failover_in_progress=FailoverProgress(from_=memory.failover_from, reason=memory.failover_reason,
                                              started_at=memory.failover_started_at)
        if memory.failover_started_at else None,
        ready_replicas=ready,
        replicas=replicas,
        failover_count=failovers,
        last_failover=last,
        failover_history=history or None,
        credentials_secret_name=credentials_secret_name(name, spec),
        rolling_update=rollout_status(rollout) if rollout else None,
    )
    return status, conditions

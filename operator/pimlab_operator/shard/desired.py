"""What a Shard should be, computed purely from its spec and what the cluster reports.

The handler gathers the inputs (whether the credentials Secret exists, the StatefulSet and its
pods), calls `desired_children`/`role_assignments`, applies them and writes `shard_status`.
A sqlserver Shard's status says its availability group is not bootstrapped until the operator
has created it (step.py, bootstrap.py); from then on, as for postgres, status comes from a
failover pass (`failover_status`).
"""

from __future__ import annotations

import hashlib
import secrets
import string
from datetime import datetime, timezone

from pimlab_operator.shard.failover import Memory, Policy, ordinal
from pimlab_operator.shard.manager import PassResult
from pimlab_operator.shard.model import ShardSpec
from pimlab_operator.shard.rollout import Rollout, rollout_status
from pimlab_operator.conditions import Condition
from pimlab_operator.objects import pod_ready
from pimlab_operator.render import owned, render, render_text

SQL_PORT = 1433
HADR_PORT = 5022
PG_PORT = 5432
MANAGER_PORT = 8008
SWITCHOVER_ANNOTATION = "pim-sre.lab/switchover-to"
DATABASE = "pim"
ROLE_LABEL = "pim-sre.lab/role"
DEFAULT_RESOURCES = {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"memory": "4Gi"}}
AG_NOT_BOOTSTRAPPED = ("the availability group is not bootstrapped yet: the operator creates it once it "
                       "can log in to the pods (pods on simulated kwok nodes run nothing)")


def selector(name: str, engine: str = "sqlserver") -> dict[str, str]:
    """Labels that pick exactly this shard's database pods."""
    return {"app.kubernetes.io/instance": name,
            "app.kubernetes.io/component": "sql-server" if engine == "sqlserver" else "postgres"}


def labels(name: str, engine: str = "sqlserver") -> dict[str, str]:
    return {"app.kubernetes.io/name": "mssql" if engine == "sqlserver" else "postgresql", **selector(name, engine),
            "app.kubernetes.io/part-of": "pim-sre-lab"}


def engine_of(shard: dict) -> str:
    return shard["spec"].get("engine") or "sqlserver"


def database_port(engine: str) -> int:
    return SQL_PORT if engine == "sqlserver" else PG_PORT


def generates_credentials(shard: dict) -> bool:
    """The operator owns the Secret only when the user did not name one."""
    return not ((shard["spec"].get("credentialsSecretRef") or {}).get("name"))


def credentials_secret_name(shard: dict) -> str:
    ref = (shard["spec"].get("credentialsSecretRef") or {}).get("name")
    return ref or f"{shard['metadata']['name']}-credentials"


def generate_password(length: int = 32) -> str:
    """An SA password SQL Server accepts (upper, lower, digit and symbol), from `secrets`."""
    symbols = "-_.+=#%"
    alphabet = string.ascii_letters + string.digits + symbols
    while True:
        password = "".join(secrets.choice(alphabet) for _ in range(length))
        if all(any(c in group for c in password) for group in
               (string.ascii_lowercase, string.ascii_uppercase, string.digits, symbols)):
            return password


def pod_names(name: str, replicas: int) -> list[str]:
    return [f"{name}-{i}" for i in range(replicas)]


def ag_replicas(name: str, namespace: str, spec: ShardSpec) -> list[dict]:
    """The AG's replicas: the primary and the first `synchronousReplicas` secondaries commit
    synchronously, the rest asynchronously."""
    synchronous = spec.synchronous_replica_count()
    return [{"pod": pod, "host": f"{pod}.{name}.{namespace}.svc", "synchronous": i <= synchronous}
            for i, pod in enumerate(pod_names(name, spec.replicas))]


def ag_sql(shard: dict, spec: ShardSpec, role: str) -> str:
    """The bootstrap T-SQL for the primary or a secondary (templates/shard/ag-bootstrap.sql.j2)."""
    name, namespace = shard["metadata"]["name"], shard["metadata"]["namespace"]
    return render_text(
        "shard/ag-bootstrap.sql.j2", role=role, name=name, namespace=namespace, ag_name=name,
        database=DATABASE, hadr_port=HADR_PORT, synchronous=spec.synchronous_replica_count(),
        replicas=ag_replicas(name, namespace, spec))


def _memory_limit_mb(resources: dict) -> int:
    """SQL Server's memory cap: 80% of the container limit, so the OOM killer never wins."""
    limit = str((resources.get("limits") or {}).get("memory", "4Gi"))
    units = {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024, "Ti": 1024 ** 2, "K": 1e3 / 2 ** 20,
             "M": 1e6 / 2 ** 20, "G": 1e9 / 2 ** 20, "T": 1e12 / 2 ** 20}
    for unit in sorted(units, key=len, reverse=True):
        if limit.endswith(unit):
            return max(2048, int(float(limit[: -len(unit)]) * units[unit] * 0.8))
    return max(2048, int(float(limit) / 2 ** 20 * 0.8))


def desired_children(shard: dict, typed: ShardSpec, password: str | None,
                     manager_token: str | None = None) -> list[dict]:
    """Every child of the Shard. The credentials Secret is included only when `password` is
    given, i.e. the operator owns it and it does not exist yet (generated once, never again)."""
    if typed.engine == "postgres":
        return postgres_children(shard, typed, password, manager_token)
    spec = typed.to_k8s()
    name = shard["metadata"]["name"]
    resources = spec.get("resources") or DEFAULT_RESOURCES
    secret_name = credentials_secret_name(shard)
    children = []
    if password is not None and generates_credentials(shard):
        children += render("shard/credentials.yaml.j2", secret_name=secret_name, username="sa",
                           labels=labels(name), password=password, manager_token=None)
    config = render("shard/mssql-config.yaml.j2", name=name, labels=labels(name), sql_port=SQL_PORT,
                    memory_limit_mb=_memory_limit_mb(resources),
                    primary_sql=ag_sql(shard, typed, "primary"),
                    secondary_sql=ag_sql(shard, typed, "secondary"))
    config_hash = hashlib.sha256(repr(config[0]["data"]).encode()).hexdigest()[:16]
    role_selectors = {"primary": {**selector(name), ROLE_LABEL: "primary"},
                      "readonly": {**selector(name), ROLE_LABEL: "secondary"}}
    children += config
    children += render("shard/statefulset.yaml.j2", name=name, spec=spec, image=typed.effective_image(), labels=labels(name),
                       selector=selector(name), role_selectors=role_selectors, resources=resources,
                       secret_name=secret_name, sql_port=SQL_PORT, hadr_port=HADR_PORT,
                       config_hash=config_hash)
    return owned(children, shard)


PG_DEFAULT_RESOURCES = {"requests": {"cpu": "250m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}}


def postgres_children(shard: dict, typed: ShardSpec, password: str | None, manager_token: str | None) -> list[dict]:
    """engine: postgres. Each pod runs `pimlab instance run`; peers are the pods' stable DNS names."""
    spec = typed.to_k8s()
    name, namespace = shard["metadata"]["name"], shard["metadata"]["namespace"]
    secret_name = credentials_secret_name(shard)
    children = []
    if password is not None and generates_credentials(shard):
        children += render("shard/credentials.yaml.j2", secret_name=secret_name, username="pim",
                           labels=labels(name, "postgres"), password=password, manager_token=manager_token)
    sel = selector(name, "postgres")
    peers = ",".join(f"{pod}={pod}.{name}.{namespace}.svc:{PG_PORT}:{MANAGER_PORT}"
                     for pod in pod_names(name, typed.replicas))
    children += render("shard/postgres-statefulset.yaml.j2", name=name, spec=spec, image=typed.effective_image(),
                       labels=labels(name, "postgres"), selector=sel,
                       role_selectors={"primary": {**sel, ROLE_LABEL: "primary"},
                                       "readonly": {**sel, ROLE_LABEL: "secondary"}},
                       resources=spec.get("resources") or PG_DEFAULT_RESOURCES, secret_name=secret_name,
                       pg_port=PG_PORT, manager_port=MANAGER_PORT, peers=peers,
                       bootstrap_primary=typed.primary or f"{name}-0",
                       synchronous=typed.synchronous_replica_count())
    return owned(children, shard)


def _own_pods(shard: dict, pods: list[dict]) -> list[dict]:
    """The shard's pods, by ordinal; terminating pods are leaving and hold no role."""
    wanted = set(pod_names(shard["metadata"]["name"], shard["spec"].get("replicas", 3)))
    return sorted((p for p in pods if p["metadata"]["name"] in wanted
                   and not p["metadata"].get("deletionTimestamp")), key=lambda p: ordinal(p["metadata"]["name"]))


def initial_primary(shard: dict) -> str:
    """Who should be primary when nobody is: the last recorded primary, else spec.primary, else pod-0."""
    status = shard.get("status") or {}
    return (status.get("currentPrimary") or shard["spec"].get("primary")
            or f"{shard['metadata']['name']}-0")


def role_assignments(shard: dict, pods: list[dict]) -> dict[str, str]:
    """Role labels to add to pods that have none yet. A pod already labelled keeps its role
    (changing roles is the failover engine's decision, not this one's)."""
    own = _own_pods(shard, pods)
    has_primary = any((p["metadata"].get("labels") or {}).get(ROLE_LABEL) == "primary" for p in own)
    primary = None if has_primary else initial_primary(shard)
    return {p["metadata"]["name"]: "primary" if p["metadata"]["name"] == primary else "secondary"
            for p in own if not (p["metadata"].get("labels") or {}).get(ROLE_LABEL)}


def _unschedulable(pod: dict) -> str | None:
    for condition in (pod.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
            return condition.get("message") or condition.get("reason") or "unschedulable"
    return None


def shard_status(shard: dict, statefulset: dict | None, pods: list[dict],
                 credentials_missing: bool = False, rollout: Rollout | None = None) -> tuple[dict, list[Condition]]:
    """Status fields and conditions from the StatefulSet and its pods."""
    name = shard["metadata"]["name"]
    wanted = shard["spec"].get("replicas", 3)
    own = _own_pods(shard, pods)
    replicas = [{"pod": p["metadata"]["name"],
                 "role": (p["metadata"].get("labels") or {}).get(ROLE_LABEL, "unknown"),
                 "ready": pod_ready(p)} for p in own]
    ready = sum(1 for r in replicas if r["ready"] and r["role"] != "unknown")
    primaries = [r["pod"] for r in replicas if r["role"] == "primary"]
    current = primaries[0] if primaries else (shard.get("status") or {}).get("currentPrimary")
    target = shard["spec"].get("primary") or current or f"{name}-0"
    reasons: dict[str, list[str]] = {}
    for p in own:
        if _unschedulable(p):
            reasons.setdefault(_unschedulable(p), []).append(p["metadata"]["name"])
    stuck = [f"{', '.join(names)}: {reason}" for reason, names in reasons.items()]
    failed = [p["metadata"]["name"] for p in own if (p.get("status") or {}).get("phase") == "Failed"]
    rolling = bool(rollout and rollout.in_progress)

    if credentials_missing:
        secret = credentials_secret_name(shard)
        degraded = Condition(
            "Degraded", True, "CredentialsSecretMissing",
            f"Secret {secret} is missing and SQL Server already uses its password: restore the "
            "Secret (it is not regenerated), or delete the StatefulSet and its volumes to start "
            "the shard over" if generates_credentials(shard) else
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
    status = {
        "phase": phase,
        "phaseReason": message[:1024],
        "currentPrimary": current,
        "targetPrimary": target,
        "readyReplicas": ready,
        "replicas": replicas,
        "credentialsSecretName": credentials_secret_name(shard),
        "rollingUpdate": rollout_status(rollout) if rollout else None,
    }
    return ({k: v for k, v in status.items() if v is not None},
            [Condition("Ready", False, reason, message), progressing, degraded])


# --------------------------------------------------------------------------------------------
# status from one failover pass (shard/manager.py): postgres, and sqlserver once its AG exists
# --------------------------------------------------------------------------------------------

def _iso(value) -> str | None:
    if value is None:
        return None
    return value.astimezone(timezone.utc).isoformat().replace("+00:00", "Z") if isinstance(value, datetime) else value


def memory_from_status(shard: dict) -> Memory:
    """What the previous pass left in status: the failover manager's memory across restarts."""
    status = shard.get("status") or {}
    progress = status.get("failoverInProgress") or {}

    def parse(value):
        return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None
    # status.engine is written only by a failover pass: before that, currentPrimary is a guess
    return Memory(current_primary=status.get("currentPrimary") if status.get("engine") == engine_of(shard) else None,
                  unhealthy_since=parse(status.get("primaryUnhealthySince")),
                  failover_started_at=parse(progress.get("startedAt")),
                  failover_from=progress.get("from"), failover_reason=progress.get("reason"))


def policy_of(shard: dict, typed: ShardSpec) -> Policy:
    """While a rolling update runs, its switchover target (or none) replaces spec.primary and the
    annotation: a pin to an outdated pod would switch back to it before it could be restarted."""
    annotations = shard["metadata"].get("annotations") or {}
    rolling = (shard.get("status") or {}).get("rollingUpdate") or {}
    if rolling.get("outdatedPods"):
        planned = rolling.get("switchoverTo")
    else:
        planned = typed.primary or annotations.get(SWITCHOVER_ANNOTATION) or None
    return Policy(automatic=typed.failover.automatic, unhealthy_after_seconds=typed.failover.unhealthy_after_seconds,
                  allow_data_loss=typed.failover.allow_data_loss,
                  synchronous_required=typed.synchronous_replica_count(), planned_primary=planned)


def synchronous_members(typed: ShardSpec) -> int:
    """n of the quorum rule: every standby is a candidate of 'ANY k (...)'."""
    return typed.replicas - 1 if typed.synchronous_replica_count() > 0 else 0


def failover_status(shard: dict, statefulset: dict | None, pods: list[dict], result: PassResult | None,
                    details: dict[str, dict], now: datetime, credentials_missing: bool = False,
                    unreachable_reason: str | None = None,
                    rollout: Rollout | None = None) -> tuple[dict, list[Condition]]:
    """Status of a Shard after a failover pass (None: no pass could run): every postgres Shard,
    and a sqlserver one once its availability group exists."""
    name = shard["metadata"]["name"]
    previous = shard.get("status") or {}
    wanted = shard["spec"].get("replicas", 3)
    memory = result.memory if result else memory_from_status(shard)
    decision = result.decision if result else None
    observed = {o.pod: o for o in (result.observations if result else [])}
    own = {p["metadata"]["name"]: p for p in _own_pods(shard, pods)}
    replicas = []
    for pod in pod_names(name, wanted):
        o, labels_ = observed.get(pod), ((own.get(pod) or {}).get("metadata", {}).get("labels") or {})
        role = labels_.get(ROLE_LABEL) or "unknown"
        entry = {"pod": pod, "role": role if role in ("primary", "secondary") else "unknown",
                 "ready": bool(o and o.reachable and o.healthy and (o.role == "primary" or o.streaming))}
        if o and o.reachable:
            entry.update({"synchronousCommit": o.synchronous, "streaming": o.streaming if o.role == "standby" else None,
                          "position": o.position, "synchronizationState": o.role})
        entry.update({k: v for k, v in (details.get(pod) or {}).items() if v is not None})
        replicas.append({k: v for k, v in entry.items() if v is not None})
    ready = sum(1 for r in replicas if r["ready"])
    primaries = [r["pod"] for r in replicas if r["role"] == "primary"]
    current = memory.current_primary
    target = (decision.target_primary if decision and decision.target_primary else None) or current
    stamp = _iso(now)

    failovers = previous.get("failoverCount", 0)
    history = list(previous.get("failoverHistory") or [])
    last = previous.get("lastFailover")
    if result and result.completed:
        failovers += 1
        last = {k: v for k, v in result.completed.items() if v is not None}
        history = (history + [last])[-20:]

    if credentials_missing:
        phase, reason = "Degraded", "CredentialsSecretMissing"
        message = (f"Secret {credentials_secret_name(shard)} is missing and PostgreSQL already uses its password: "
                   "restore the Secret (it is not regenerated)")
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
    status = {
        "engine": engine_of(shard),
        "phase": phase,
        "phaseReason": (message or reason)[:1024],
        "currentPrimary": current,
        "currentPrimaryTimestamp": stamp if current != previous.get("currentPrimary") else
        previous.get("currentPrimaryTimestamp") or (stamp if current else None),
        "targetPrimary": target,
        "targetPrimaryTimestamp": stamp if target != previous.get("targetPrimary") else
        previous.get("targetPrimaryTimestamp") or (stamp if target else None),
        "primaryUnhealthySince": _iso(memory.unhealthy_since),
        "failoverInProgress": {"from": memory.failover_from, "reason": memory.failover_reason,
                               "startedAt": _iso(memory.failover_started_at)} if memory.failover_started_at else None,
        "readyReplicas": ready,
        "replicas": replicas,
        "failoverCount": failovers,
        "lastFailover": last,
        "failoverHistory": history or None,
        "credentialsSecretName": credentials_secret_name(shard),
        "rollingUpdate": rollout_status(rollout) if rollout else None,
    }
    return {k: v for k, v in status.items() if v is not None}, conditions

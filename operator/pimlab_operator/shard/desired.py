"""What a Shard should be, computed purely from its spec and what the cluster reports.

The handler gathers the inputs (whether the credentials Secret exists, the StatefulSet and its
pods), calls `desired_children`/`role_assignments`, applies them and writes `shard_status`.
The availability group itself is bootstrapped by a later engine: until then the status says
so instead of pretending the database is up.
"""

from __future__ import annotations

import hashlib
import secrets
import string

from pimlab_operator.shard.model import ShardSpec
from pimlab_operator.conditions import Condition
from pimlab_operator.objects import pod_ready
from pimlab_operator.render import owned, render, render_text

SQL_PORT = 1433
HADR_PORT = 5022
DATABASE = "pim"
ROLE_LABEL = "pim-sre.lab/role"
DEFAULT_RESOURCES = {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"memory": "4Gi"}}
AG_NOT_BOOTSTRAPPED = ("the availability group is not bootstrapped yet: the SQL Server AG "
                       "engine (bootstrap, health, failover) is a later issue")


def selector(name: str) -> dict[str, str]:
    """Labels that pick exactly this shard's SQL Server pods."""
    return {"app.kubernetes.io/instance": name, "app.kubernetes.io/component": "sql-server"}


def labels(name: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": "mssql", **selector(name), "app.kubernetes.io/part-of": "pim-sre-lab"}


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


def desired_children(shard: dict, typed: ShardSpec, password: str | None) -> list[dict]:
    """Every child of the Shard. The credentials Secret is included only when `password` is
    given, i.e. the operator owns it and it does not exist yet (generated once, never again)."""
    spec = typed.to_k8s()
    name = shard["metadata"]["name"]
    resources = spec.get("resources") or DEFAULT_RESOURCES
    secret_name = credentials_secret_name(shard)
    children = []
    if password is not None and generates_credentials(shard):
        children += render("shard/credentials.yaml.j2", secret_name=secret_name,
                           labels=labels(name), password=password)
    config = render("shard/mssql-config.yaml.j2", name=name, labels=labels(name), sql_port=SQL_PORT,
                    memory_limit_mb=_memory_limit_mb(resources),
                    primary_sql=ag_sql(shard, typed, "primary"),
                    secondary_sql=ag_sql(shard, typed, "secondary"))
    config_hash = hashlib.sha256(repr(config[0]["data"]).encode()).hexdigest()[:16]
    role_selectors = {"primary": {**selector(name), ROLE_LABEL: "primary"},
                      "readonly": {**selector(name), ROLE_LABEL: "secondary"}}
    children += config
    children += render("shard/statefulset.yaml.j2", name=name, spec=spec, labels=labels(name),
                       selector=selector(name), role_selectors=role_selectors, resources=resources,
                       secret_name=secret_name, sql_port=SQL_PORT, hadr_port=HADR_PORT,
                       config_hash=config_hash)
    return owned(children, shard)


def _ordinal(pod: dict) -> int:
    return int(pod["metadata"]["name"].rsplit("-", 1)[1])


def _own_pods(shard: dict, pods: list[dict]) -> list[dict]:
    """The shard's pods, by ordinal; terminating pods are leaving and hold no role."""
    wanted = set(pod_names(shard["metadata"]["name"], shard["spec"].get("replicas", 3)))
    return sorted((p for p in pods if p["metadata"]["name"] in wanted
                   and not p["metadata"].get("deletionTimestamp")), key=_ordinal)


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
                 credentials_missing: bool = False) -> tuple[dict, list[Condition]]:
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
    sts_status = (statefulset or {}).get("status") or {}
    rolling = bool(sts_status.get("updateRevision")) and \
        sts_status.get("updateRevision") != sts_status.get("currentRevision")

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
    }
    return ({k: v for k, v in status.items() if v is not None},
            [Condition("Ready", False, reason, message), progressing, degraded])

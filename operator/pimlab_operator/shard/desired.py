"""What a Shard should have, computed purely from its spec: its children, the role labels of
pods that have none, the availability group's T-SQL and the failover policy's inputs.

The handler gathers the inputs (whether the credentials Secret exists, the StatefulSet and its
pods), calls `desired_children`/`role_assignments` and applies them; status.py says how it went.
"""

from __future__ import annotations

import hashlib
import secrets
import string

from pimlab_operator.render import owned, render, render_text
from pimlab_operator.shard.failover import ordinal
from pimlab_operator.shard.model import ShardSpec

SQL_PORT = 1433
HADR_PORT = 5022
PG_PORT = 5432
MANAGER_PORT = 8008
SWITCHOVER_ANNOTATION = "pim-sre.lab/switchover-to"
DATABASE = "pim"
ROLE_LABEL = "pim-sre.lab/role"
DEFAULT_RESOURCES = {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"memory": "4Gi"}}
#: The readiness probe's query, run with sqlcmd after a login as sa (templates/shard/statefulset.yaml.j2).
READINESS_QUERY = "SET NOCOUNT ON; SELECT 1;"
#: sqlcmd's login timeout in the readiness probe (-l); the probe's own timeout is a little longer.
READINESS_LOGIN_SECONDS = 3


def selector(name: str, engine: str = "sqlserver") -> dict[str, str]:
    """Labels that pick exactly this shard's database pods."""
    return {"app.kubernetes.io/instance": name,
            "app.kubernetes.io/component": "sql-server" if engine == "sqlserver" else "postgres"}


def labels(name: str, engine: str = "sqlserver") -> dict[str, str]:
    return {"app.kubernetes.io/name": "mssql" if engine == "sqlserver" else "postgresql", **selector(name, engine),
            "app.kubernetes.io/part-of": "pim-sre-lab"}


def generates_credentials(spec: ShardSpec) -> bool:
    """The operator owns the Secret only when the user did not name one."""
    return not (spec.credentials_secret_ref and spec.credentials_secret_ref.name)


def credentials_secret_name(name: str, spec: ShardSpec) -> str:
    """The Secret with the database login: the user's, or `<shard>-credentials`."""
    return spec.credentials_secret_ref.name if not generates_credentials(spec) else f"{name}-credentials"


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


def desired_children(shard: dict, spec: ShardSpec, password: str | None,
                     manager_token: str | None = None) -> list[dict]:
    """Every child of the Shard. The credentials Secret is included only when `password` is
    given, i.e. the operator owns it and it does not exist yet (generated once, never again)."""
    if spec.engine == "postgres":
        return postgres_children(shard, spec, password, manager_token)
    name = shard["metadata"]["name"]
    resources = spec.resources.to_k8s() if spec.resources else DEFAULT_RESOURCES
    secret_name = credentials_secret_name(name, spec)
    children = []
    if password is not None and generates_credentials(spec):
        children += render("shard/credentials.yaml.j2", secret_name=secret_name, username="sa",
                           labels=labels(name), password=password, manager_token=None)
    config = render("shard/mssql-config.yaml.j2", name=name, labels=labels(name), sql_port=SQL_PORT,
                    memory_limit_mb=_memory_limit_mb(resources),
                    primary_sql=ag_sql(shard, spec, "primary"),
                    secondary_sql=ag_sql(shard, spec, "secondary"))
    config_hash = hashlib.sha256(repr(config[0]["data"]).encode()).hexdigest()[:16]
    role_selectors = {"primary": {**selector(name), ROLE_LABEL: "primary"},
                      "readonly": {**selector(name), ROLE_LABEL: "secondary"}}
    children += config
    children += render("shard/statefulset.yaml.j2", name=name, spec=spec.to_k8s(), image=spec.effective_image(),
                       labels=labels(name), selector=selector(name), role_selectors=role_selectors,
                       resources=resources, secret_name=secret_name, sql_port=SQL_PORT, hadr_port=HADR_PORT,
                       config_hash=config_hash, probe_query=READINESS_QUERY,
                       probe_login_seconds=READINESS_LOGIN_SECONDS)
    return owned(children, shard)


PG_DEFAULT_RESOURCES = {"requests": {"cpu": "250m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}}


def postgres_children(shard: dict, spec: ShardSpec, password: str | None, manager_token: str | None) -> list[dict]:
    """engine: postgres. Each pod runs `pimlab instance run`; peers are the pods' stable DNS names."""
    name, namespace = shard["metadata"]["name"], shard["metadata"]["namespace"]
    secret_name = credentials_secret_name(name, spec)
    children = []
    if password is not None and generates_credentials(spec):
        children += render("shard/credentials.yaml.j2", secret_name=secret_name, username="pim",
                           labels=labels(name, "postgres"), password=password, manager_token=manager_token)
    sel = selector(name, "postgres")
    peers = ",".join(f"{pod}={pod}.{name}.{namespace}.svc:{PG_PORT}:{MANAGER_PORT}"
                     for pod in pod_names(name, spec.replicas))
    children += render("shard/postgres-statefulset.yaml.j2", name=name, spec=spec.to_k8s(), image=spec.effective_image(),
                       labels=labels(name, "postgres"), selector=sel,
                       role_selectors={"primary": {**sel, ROLE_LABEL: "primary"},
                                       "readonly": {**sel, ROLE_LABEL: "secondary"}},
                       resources=spec.resources.to_k8s() if spec.resources else PG_DEFAULT_RESOURCES,
                       secret_name=secret_name, pg_port=PG_PORT, manager_port=MANAGER_PORT, peers=peers,
                       bootstrap_primary=spec.primary or f"{name}-0",
                       synchronous=spec.synchronous_replica_count())
    return owned(children, shard)


def own_pods(name: str, spec: ShardSpec, pods: list[dict]) -> list[dict]:
    """The shard's pods, by ordinal; terminating pods are leaving and hold no role."""
    wanted = set(pod_names(name, spec.replicas))
    return sorted((p for p in pods if p["metadata"]["name"] in wanted
                   and not p["metadata"].get("deletionTimestamp")), key=lambda p: ordinal(p["metadata"]["name"]))


def initial_primary(name: str, spec: ShardSpec, recorded_primary: str | None) -> str:
    """Who should be primary when nobody is: the last recorded primary, else spec.primary, else pod-0."""
    return recorded_primary or spec.primary or f"{name}-0"


def role_assignments(name: str, spec: ShardSpec, pods: list[dict], recorded_primary: str | None) -> dict[str, str]:
    """Role labels to add to pods that have none yet. A pod already labelled keeps its role
    (changing roles is the failover engine's decision, not this one's)."""
    own = own_pods(name, spec, pods)
    has_primary = any((p["metadata"].get("labels") or {}).get(ROLE_LABEL) == "primary" for p in own)
    primary = None if has_primary else initial_primary(name, spec, recorded_primary)
    return {p["metadata"]["name"]: "primary" if p["metadata"]["name"] == primary else "secondary"
            for p in own if not (p["metadata"].get("labels") or {}).get(ROLE_LABEL)}


def synchronous_members(spec: ShardSpec) -> int:
    """n of the quorum rule: every standby is a candidate of 'ANY k (...)'."""
    return spec.replicas - 1 if spec.synchronous_replica_count() > 0 else 0

"""Shard -> database StatefulSet, its Services, PDB, config and (generated once) credentials;
then one pass of the failover manager (postgres, and SQL Server once its availability group
exists) and one step of a rolling update (shard/rollout.py) per reconcile."""

from __future__ import annotations

import base64
import logging
import secrets
import time
from datetime import datetime, timezone

from pimlab_operator import kube, metrics, reconcile
from pimlab_operator.objects import label_selector, pod_ready
from pimlab_operator.reconcile import ChildKind
from pimlab_operator.shard import desired, rollout, status
from pimlab_operator.shard.bootstrap import bootstrap_steps, carry_out
from pimlab_operator.shard.drivers.postgres import Endpoint, PostgresDriver
from pimlab_operator.shard.drivers.sqlserver import SqlServerDriver, Target, pyodbc_connect
from pimlab_operator.shard.failover_pass import PassResult, run_pass
from pimlab_operator.shard.model import RollingUpdateStatus, ShardSpec, ShardStatus

log = logging.getLogger("pimlab.shard")
#: Nodes kwok simulates: their pods run nothing and their IPs lead nowhere, so the failover
#: manager never sends them a packet.
FAKE_NODE_ANNOTATION = ("kwok.x-k8s.io/node", "fake")

CHILDREN = (
    ChildKind("v1", "Secret"), ChildKind("v1", "ConfigMap"), ChildKind("v1", "Service"),
    ChildKind("apps/v1", "StatefulSet"), ChildKind("policy/v1", "PodDisruptionBudget"),
)


def fails_over(body: dict) -> bool:
    """A postgres Shard, and a sqlserver one once its availability group exists (status.engine
    is written only by a failover pass, never on kwok), gets a failover pass every few seconds,
    never backed off."""
    return ((body.get("spec") or {}).get("engine")) == "postgres" \
        or ((body.get("status") or {}).get("engine")) == "sqlserver"


def _credentials(body: dict, spec: ShardSpec) -> tuple[str | None, bool, bool]:
    """(a new password, whether our Secret exists, whether the Secret is missing for good).

    A password is generated only once, for a Shard whose StatefulSet does not exist yet. If the
    Secret disappears after SQL Server was initialised with it, a new password would lock the
    operator and the services out: the Shard reports it instead of inventing one."""
    name, namespace = body["metadata"]["name"], body["metadata"]["namespace"]
    if kube.get("v1", "Secret", desired.credentials_secret_name(name, spec), namespace):
        return None, True, False
    first_time = desired.generates_credentials(spec) and \
        kube.get("apps/v1", "StatefulSet", name, namespace) is None
    return (desired.generate_password(), False, False) if first_time else (None, False, True)


def _pods(body: dict, spec: ShardSpec) -> list[dict]:
    return kube.list_objects("v1", "Pod", body["metadata"]["namespace"], label_selector=label_selector(
        desired.selector(body["metadata"]["name"], spec.engine)))


def step(body: dict, spec: ShardSpec) -> None:
    name = body["metadata"]["name"]
    password, secret_exists, credentials_missing = _credentials(body, spec)
    token = secrets.token_urlsafe(32) if password and spec.engine == "postgres" else None
    # The generated Secret is applied once; afterwards it is kept, never rewritten or pruned.
    keep = (("v1", "Secret", desired.credentials_secret_name(name, spec)),) if secret_exists else ()
    reconcile.apply_children(body, desired.desired_children(body, spec, password, token), prune=CHILDREN, keep=keep)
    if spec.engine == "postgres":
        return _postgres(body, spec, credentials_missing)
    return _sqlserver(body, spec, credentials_missing)


def _real_node(pod: dict, nodes: dict[str, dict | None]) -> bool:
    node = (pod.get("spec") or {}).get("nodeName")
    if not node:
        return False
    if node not in nodes:
        nodes[node] = kube.get("v1", "Node", node, None)
    annotations = ((nodes[node] or {}).get("metadata") or {}).get("annotations") or {}
    return nodes[node] is not None and annotations.get(FAKE_NODE_ANNOTATION[0]) != FAKE_NODE_ANNOTATION[1]


def _secret_value(body: dict, spec: ShardSpec, key: str) -> str | None:
    secret = kube.get("v1", "Secret", desired.credentials_secret_name(body["metadata"]["name"], spec),
                      body["metadata"]["namespace"])
    value = ((secret or {}).get("data") or {}).get(key)
    return base64.b64decode(value).decode() if value else None


def _reachable(pods: list[dict], ready_only: bool = False) -> dict[str, str]:
    """pod -> IP for the pods the operator can talk to: not leaving, on a real node (kwok's
    pods run nothing), and for SQL Server also Ready (its readiness probe is a login and a query
    with sqlcmd: templates/shard/statefulset.yaml.j2)."""
    nodes: dict[str, dict | None] = {}
    return {p["metadata"]["name"]: p["status"]["podIP"] for p in pods
            if (p.get("status") or {}).get("podIP") and not p["metadata"].get("deletionTimestamp")
            and _real_node(p, nodes) and (not ready_only or pod_ready(p))}


def _sqlserver(body: dict, spec: ShardSpec, credentials_missing: bool) -> None:
    """Until the availability group exists: role labels by ordinal, and its bootstrap once the
    pods answer (certificate, endpoint, CREATE AVAILABILITY GROUP on the initial primary, JOIN
    on the others). From then on the same failover pass as postgres, over pyodbc."""
    name, namespace = body["metadata"]["name"], body["metadata"]["namespace"]
    memory = status.memory_from_status(body, spec)
    recorded_primary = status.recorded(body).current_primary
    pods = _pods(body, spec)
    if memory.current_primary is None:
        assignments = desired.role_assignments(name, spec, pods, recorded_primary)
        for pod, role in assignments.items():
            kube.patch_labels("v1", "Pod", pod, namespace, {desired.ROLE_LABEL: role})
        if assignments:
            pods = _pods(body, spec)
    statefulset = kube.get("apps/v1", "StatefulSet", name, namespace)
    addresses = _reachable(pods, ready_only=True)
    username, password = _secret_value(body, spec, "username"), _secret_value(body, spec, "password")
    # once the group exists, no reachable pod is a failover pass's business (all unreachable),
    # never a return to the pre-bootstrap status, which would forget the group
    if (not addresses and memory.current_primary is None) or not password or credentials_missing:
        observed, wanted = status.shard_status(body, spec, statefulset, pods, credentials_missing,
                                               _roll(body, spec, statefulset, pods, None))
        reconcile.write_status(body, observed, wanted)
        return
    driver = SqlServerDriver({pod: Target(ip, desired.SQL_PORT) for pod, ip in addresses.items()}, name,
                             connect=lambda target: pyodbc_connect(target, username, password),
                             allow_data_loss=spec.failover.allow_data_loss)
    labels = {p["metadata"]["name"]: (p["metadata"].get("labels") or {}).get(desired.ROLE_LABEL) for p in pods}
    observations = driver.observe(desired.pod_names(name, spec.replicas), labels)
    steps = bootstrap_steps(observations, desired.initial_primary(name, spec, recorded_primary))
    group_primary = next((o.pod for o in observations if o.reachable and o.role == "primary"), None)
    done, errors = carry_out(driver, steps, password, lambda role: desired.ag_sql(body, spec, role), group_primary)
    for step_ in done:
        kube.post_event(body, "Normal", "AvailabilityGroupCreated" if step_.role == "primary" else "ReplicaJoined",
                        f"{step_.pod} {'created availability group ' + name if step_.role == 'primary' else 'joined ' + name}")
    for error in errors:
        log.warning("shard %s/%s: bootstrap: %s", namespace, name, error)
        kube.post_event(body, "Warning", "BootstrapFailed", error)
    if memory.current_primary is None and not group_primary and not any(s.role == "primary" for s in done):
        observed, wanted = status.shard_status(body, spec, statefulset, pods, credentials_missing,
                                               _roll(body, spec, statefulset, pods, None))
        reconcile.write_status(body, observed, wanted)
        return
    _failover_pass(body, spec, driver, pods, statefulset, credentials_missing)


def _postgres(body: dict, spec: ShardSpec, credentials_missing: bool) -> None:
    """One failover pass: observe every instance manager, decide, act (labels through the
    apiserver, the rest through the managers), then write what happened into status."""
    name, namespace = body["metadata"]["name"], body["metadata"]["namespace"]
    pods = _pods(body, spec)
    endpoints = {pod: Endpoint(ip, desired.MANAGER_PORT) for pod, ip in _reachable(pods).items()}
    statefulset = kube.get("apps/v1", "StatefulSet", name, namespace)
    if not endpoints:
        reason = ("the pods run on simulated (kwok) nodes or have no IP yet: no instance manager to ask"
                  if pods else None)
        observed, wanted = status.failover_status(body, spec, statefulset, pods, None, {}, datetime.now(timezone.utc),
                                                  credentials_missing, reason,
                                                  rollout=_roll(body, spec, statefulset, pods, None))
        reconcile.write_status(body, observed, wanted)
        return
    driver = PostgresDriver(endpoints, token=_secret_value(body, spec, "manager-token"))
    _failover_pass(body, spec, driver, pods, statefulset, credentials_missing)


def _failover_pass(body: dict, spec: ShardSpec, driver, pods: list[dict], statefulset: dict | None,
                   credentials_missing: bool) -> None:
    """One failover pass per Shard at a time: the 2 s timer, the resync and a spec change each
    run the step in a thread of their own, and two passes at once would act on the same
    instances, the slower one's status write would lose to the other's (409), and its retry
    would read a failover half done (a planned switchover would look like a PrimaryUnhealthy
    failover). Skipped while another pass runs (the next tick decides again); otherwise decided
    from the Shard as it is now, not as the event that started this step saw it."""
    lock = reconcile.context().memory.failover_pass_lock(body["metadata"]["uid"])
    if not lock.acquire(blocking=False):
        return
    try:
        fresh = kube.get(body.get("apiVersion", "pim-sre.lab/v1alpha1"), "Shard", body["metadata"]["name"],
                         body["metadata"]["namespace"])
        _locked_pass(fresh or body, spec, driver, pods, statefulset, credentials_missing)
    finally:
        lock.release()


def _locked_pass(body: dict, spec: ShardSpec, driver, pods: list[dict], statefulset: dict | None,
                 credentials_missing: bool) -> None:
    name, namespace = body["metadata"]["name"], body["metadata"]["namespace"]
    now = datetime.now(timezone.utc)
    labels = {p["metadata"]["name"]: (p["metadata"].get("labels") or {}).get(desired.ROLE_LABEL) for p in pods}

    def set_label(pod: str, role: str | None) -> None:
        kube.patch_labels("v1", "Pod", pod, namespace, {desired.ROLE_LABEL: role})

    started = time.monotonic()
    result = run_pass(driver, desired.pod_names(name, spec.replicas), labels, set_label,
                      status.policy_of(body, spec), status.memory_from_status(body, spec),
                      desired.synchronous_members(spec))
    # logged when the pass acts or its decision changes, not every 2 s while a shard waits
    last_said = reconcile.context().memory.last_said
    said = (result.decision.phase, result.decision.reason)
    if result.steps or result.completed or last_said.get(body["metadata"]["uid"]) != said:
        log.info("shard %s/%s: %s (pass of %.2fs)", namespace, name, result.summary(), time.monotonic() - started)
        last_said[body["metadata"]["uid"]] = said
    for event in result.events:
        kube.post_event(body, "Warning" if event.warning else "Normal", event.reason, event.message or "")
    for error in result.errors:
        log.warning("shard %s/%s: %s", namespace, name, error)
    if result.completed:
        record = result.completed
        kube.post_event(body, "Normal", "FailoverCompleted",
                        f"{record.from_} -> {record.to} in {record.duration_seconds}s "
                        f"({record.reason}; writes out for {record.outage_seconds}s)")
    pods = _pods(body, spec)
    observed, wanted = status.failover_status(body, spec, statefulset, pods, result,
                                              driver.replica_details(result.memory.current_primary), now,
                                              credentials_missing, rollout=_roll(body, spec, statefulset, pods, result))
    written_over = _write_pass_status(body, observed, wanted)
    if written_over is not None:
        observe_failovers(written_over, observed)


def observe_failovers(before: dict, written: ShardStatus) -> None:
    """sql_failover_duration_seconds: each failover that `written`, the status written over the
    Shard `before`, completes."""
    meta = before["metadata"]
    for record in status.completed_since(status.recorded(before), written):
        if record.duration_seconds is not None:
            metrics.failover_completed(meta["namespace"], meta["name"], record.reason, record.duration_seconds)


def _roll(body: dict, spec: ShardSpec, statefulset: dict | None, pods: list[dict],
          result: PassResult | None) -> rollout.Rollout:
    """One step of a rolling update: at most one pod deleted per pass, judged by this pass's
    observations (`result`), or by the kubelet's readiness when no pass could run."""
    namespace = body["metadata"]["namespace"]
    sts_status = (statefulset or {}).get("status") or {}
    previous = status.recorded(body).rolling_update or RollingUpdateStatus()
    paused = None
    if statefulset and sts_status.get("observedGeneration") != statefulset["metadata"].get("generation"):
        paused = "the StatefulSet controller has not taken in the new template yet"
    elif result and not (result.decision.phase == "Ready" or result.decision.reason == "StandbysNotStreaming"):
        paused = f"the shard is {result.decision.phase} ({result.decision.reason})"
    primary = result.memory.current_primary if result else None
    replicas = rollout.replicas_of(pods, desired.pod_names(body["metadata"]["name"], spec.replicas), desired.ROLE_LABEL,
                                   primary, result.observations if result else None)
    step_ = rollout.plan(replicas, sts_status.get("updateRevision"), spec.replicas, paused, previous.switchover_to)
    if step_.restart:
        uid = next(p["metadata"]["uid"] for p in pods if p["metadata"]["name"] == step_.restart)
        try:  # the uid precondition: never the pod the StatefulSet has already recreated
            kube.delete("v1", "Pod", step_.restart, namespace, {"preconditions": {"uid": uid}})
        except kube.ApiError as error:
            log.warning("shard %s/%s: rolling update: deleting %s: %s", namespace, body["metadata"]["name"],
                        step_.restart, error)
        else:
            log.info("shard %s/%s: rolling update: %s", namespace, body["metadata"]["name"], step_.message)
            kube.post_event(body, "Normal", "RollingUpdate", step_.message)
    if step_.reason == "SwitchingOver" and previous.reason != "SwitchingOver":
        kube.post_event(body, "Normal", "RollingUpdate", step_.message)
    if previous.outdated_pods and not step_.in_progress:
        kube.post_event(body, "Normal", "RollingUpdateCompleted", f"every pod runs revision {step_.revision}")
    return step_


def _write_pass_status(body: dict, observed: ShardStatus, wanted: list) -> dict | None:
    """Status after a pass that acted: what it did (a fence, a promotion) lives only here, so a
    409 is never answered by deciding again (that pass would see its own fence as a failed
    primary). Passes are one at a time (`_pass_lock`); whoever wrote since, kopf's annotations or
    a spec change, did not touch these fields: they are written again on the newer object.
    Returns the Shard as it was before the write that took (None: it is gone)."""
    for _ in range(reconcile.CONFLICT_ATTEMPTS):
        try:
            reconcile.write_status(body, observed, wanted)
            return body
        except kube.Conflict:
            newer = kube.get(body.get("apiVersion", "pim-sre.lab/v1alpha1"), "Shard", body["metadata"]["name"],
                             body["metadata"]["namespace"])
            if newer is None:
                return None
            body = newer
    reconcile.write_status(body, observed, wanted)
    return body

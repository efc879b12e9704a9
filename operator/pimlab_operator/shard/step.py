"""Shard -> database StatefulSet, its Services, PDB, config and (generated once) credentials;
for `engine: postgres` also one pass of the failover manager per reconcile."""

from __future__ import annotations

import base64
import logging
import secrets
from datetime import datetime, timezone

from pimlab_operator import kube, reconcile
from pimlab_operator.objects import label_selector
from pimlab_operator.reconcile import ChildKind
from pimlab_operator.shard import desired
from pimlab_operator.shard.drivers.postgres import Endpoint, PostgresDriver
from pimlab_operator.shard.manager import run_pass
from pimlab_operator.shard.model import ShardSpec

log = logging.getLogger("pimlab.shard")
#: Nodes kwok simulates: their pods run nothing and their IPs lead nowhere, so the failover
#: manager never sends them a packet.
FAKE_NODE_ANNOTATION = ("kwok.x-k8s.io/node", "fake")

CHILDREN = (
    ChildKind("v1", "Secret"), ChildKind("v1", "ConfigMap"), ChildKind("v1", "Service"),
    ChildKind("apps/v1", "StatefulSet"), ChildKind("policy/v1", "PodDisruptionBudget"),
)


def fails_over(body: dict) -> bool:
    """A postgres Shard gets a failover pass every few seconds, never backed off."""
    return ((body.get("spec") or {}).get("engine")) == "postgres"

def _credentials(body: dict) -> tuple[str | None, bool, bool]:
    """(a new password, whether our Secret exists, whether the Secret is missing for good).

    A password is generated only once, for a Shard whose StatefulSet does not exist yet. If the
    Secret disappears after SQL Server was initialised with it, a new password would lock the
    operator and the services out: the Shard reports it instead of inventing one."""
    name, namespace = body["metadata"]["name"], body["metadata"]["namespace"]
    if kube.get("v1", "Secret", desired.credentials_secret_name(body), namespace):
        return None, True, False
    first_time = desired.generates_credentials(body) and \
        kube.get("apps/v1", "StatefulSet", name, namespace) is None
    return (desired.generate_password(), False, False) if first_time else (None, False, True)


def _pods(body: dict) -> list[dict]:
    return kube.list_objects("v1", "Pod", body["metadata"]["namespace"], label_selector=label_selector(
        desired.selector(body["metadata"]["name"], desired.engine_of(body))))


def step(body: dict, spec: ShardSpec) -> None:
    name, namespace = body["metadata"]["name"], body["metadata"]["namespace"]
    password, secret_exists, credentials_missing = _credentials(body)
    token = secrets.token_urlsafe(32) if password and spec.engine == "postgres" else None
    # The generated Secret is applied once; afterwards it is kept, never rewritten or pruned.
    keep = (("v1", "Secret", desired.credentials_secret_name(body)),) if secret_exists else ()
    reconcile.apply_children(body, desired.desired_children(body, spec, password, token), prune=CHILDREN, keep=keep)
    if spec.engine == "postgres":
        return _postgres(body, spec, credentials_missing)
    pods = _pods(body)
    assignments = desired.role_assignments(body, pods)
    for pod, role in assignments.items():
        kube.patch_labels("v1", "Pod", pod, namespace, {desired.ROLE_LABEL: role})
    if assignments:
        pods = _pods(body)
    statefulset = kube.get("apps/v1", "StatefulSet", name, namespace)
    fields, wanted = desired.shard_status(body, statefulset, pods, credentials_missing)
    reconcile.write_status(body, fields, wanted)


def _real_node(pod: dict, nodes: dict[str, dict | None]) -> bool:
    node = (pod.get("spec") or {}).get("nodeName")
    if not node:
        return False
    if node not in nodes:
        nodes[node] = kube.get("v1", "Node", node, None)
    annotations = ((nodes[node] or {}).get("metadata") or {}).get("annotations") or {}
    return nodes[node] is not None and annotations.get(FAKE_NODE_ANNOTATION[0]) != FAKE_NODE_ANNOTATION[1]


def _manager_token(body: dict) -> str | None:
    secret = kube.get("v1", "Secret", desired.credentials_secret_name(body), body["metadata"]["namespace"])
    value = ((secret or {}).get("data") or {}).get("manager-token")
    return base64.b64decode(value).decode() if value else None


def _postgres(body: dict, spec: ShardSpec, credentials_missing: bool) -> None:
    """One failover pass: observe every instance manager, decide, act (labels through the
    apiserver, the rest through the managers), then write what happened into status."""
    name, namespace = body["metadata"]["name"], body["metadata"]["namespace"]
    pods = _pods(body)
    nodes: dict[str, dict | None] = {}
    endpoints = {p["metadata"]["name"]: Endpoint(p["status"]["podIP"], desired.MANAGER_PORT) for p in pods
                 if (p.get("status") or {}).get("podIP") and not p["metadata"].get("deletionTimestamp")
                 and _real_node(p, nodes)}
    statefulset = kube.get("apps/v1", "StatefulSet", name, namespace)
    now = datetime.now(timezone.utc)
    if not endpoints:
        reason = ("the pods run on simulated (kwok) nodes or have no IP yet: no instance manager to ask"
                  if pods else None)
        fields, wanted = desired.failover_status(body, statefulset, pods, None, {}, now, credentials_missing, reason)
        reconcile.write_status(body, fields, wanted)
        return
    driver = PostgresDriver(endpoints, token=_manager_token(body))
    labels = {p["metadata"]["name"]: (p["metadata"].get("labels") or {}).get(desired.ROLE_LABEL) for p in pods}

    def set_label(pod: str, role: str | None) -> None:
        kube.patch_labels("v1", "Pod", pod, namespace, {desired.ROLE_LABEL: role})

    result = run_pass(driver, desired.pod_names(name, spec.replicas), labels, set_label,
                      desired.policy_of(body, spec), desired.memory_from_status(body),
                      desired.synchronous_members(spec))
    for event in result.events:
        kube.post_event(body, "Warning" if event.warning else "Normal", event.reason, event.message or "")
    for error in result.errors:
        log.warning("shard %s/%s: %s", namespace, name, error)
    if result.completed:
        kube.post_event(body, "Normal", "FailoverCompleted",
                        f"{result.completed['from']} -> {result.completed['to']} in {result.completed['durationSeconds']}s "
                        f"({result.completed['reason']}; writes out for {result.completed['outageSeconds']}s)")
    fields, wanted = desired.failover_status(body, statefulset, _pods(body), result,
                                             driver.replica_details(result.memory.current_primary), now,
                                             credentials_missing)
    reconcile.write_status(body, fields, wanted)

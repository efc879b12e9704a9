"""The operator's own faults and their cleanup: the only code that touches a target.

- podKill: the API deletes the pods (grace 0 unless set).
- containerKill: SIGKILL to the container's main process through the node's container runtime
  (containerd's `ctr tasks kill`), so the kubelet sees a crash, not a deletion: the pod keeps
  its name and the container restarts. The socket is the settings' `cri_socket`
  ($PIMLAB_CRI_SOCKET, else the local lab's `.lab/cluster/node/containerd.sock`); kwok pods
  have no container and are refused.
- sqlFailover: a switchover is asked of the Shard's failover manager with the
  `pim-sre.lab/switchover-to` annotation (removed again by `cleanup`); a fenced failover
  deletes the primary pod and lets the manager fence and promote.
"""

from __future__ import annotations

import base64
import datetime as dt
import subprocess
import time
from pathlib import Path

from pimlab_operator import kube
from pimlab_operator.chaos import desired
from pimlab_operator.schema import API_VERSION

SWITCHOVER_ANNOTATION = "pim-sre.lab/switchover-to"  # the Shard's own (shard/desired.py)
CTR_TIMEOUT_SECONDS = 15


class InjectionError(RuntimeError):
    """A fault could not be injected; `reason` is one CamelCase word for the condition."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def _container_id(pod: dict, container: str | None) -> str:
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    wanted = container or (pod["spec"]["containers"][0]["name"])
    found = next((s for s in statuses if s["name"] == wanted), None)
    if not found:
        raise InjectionError("NoContainer", f"pod {pod['metadata']['name']} has no container {wanted}")
    if not found.get("containerID"):
        raise InjectionError("NoContainer", f"container {wanted} of pod {pod['metadata']['name']} has no runtime "
                             "behind it (a pod on a kwok node runs nothing to kill)")
    runtime, _, cid = found["containerID"].partition("://")
    if runtime != "containerd":
        raise InjectionError("UnsupportedRuntime", f"container {wanted} runs on {runtime}: containerKill speaks to containerd")
    return cid


def kill_containers(pods: list[dict], container: str | None, socket: Path | None) -> str:
    """SIGKILL each pod's container's task through containerd's CRI namespace at `socket`."""
    if socket is None or not socket.exists():
        raise InjectionError("CRIUnavailable", "containerKill needs the node's containerd socket on this host "
                             f"({socket or 'set PIMLAB_CRI_SOCKET'}): run the operator beside the node "
                             "(`make lab` with --local-operator, or mount the socket)")
    killed = []
    for pod in pods:
        cid = _container_id(pod, container)
        proc = subprocess.run(["ctr", "--address", str(socket), "--namespace", "k8s.io", "tasks", "kill",
                               "--signal", "SIGKILL", cid], capture_output=True, text=True, timeout=CTR_TIMEOUT_SECONDS)
        if proc.returncode != 0:
            raise InjectionError("ContainerKillFailed", f"ctr tasks kill {cid[:12]}: {proc.stderr.strip()[:300]}")
        killed.append(f"{pod['metadata']['name']} ({cid[:12]})")
    return f"SIGKILL to the main process of {', '.join(killed)} through containerd"


def request_switchover(body: dict, shard_name: str, namespace: str, to: str) -> str:
    """Annotate the Shard: its failover manager fences the primary and promotes `to` once caught up."""
    kube.patch_annotations(API_VERSION, "Shard", shard_name, namespace,
                           {SWITCHOVER_ANNOTATION: to, desired.REQUESTED_BY_ANNOTATION: body["metadata"]["name"]})
    return f"asked Shard {shard_name} for a switchover to {to}"


def cleanup(body: dict) -> list[str]:
    """Remove what this experiment left: its Chaos Mesh objects, its switchover request.
    Idempotent; returns what was removed."""
    meta = body["metadata"]
    removed = []
    for ref in (body.get("status") or {}).get("generatedObjects") or []:
        if kube.kind_exists(ref["apiVersion"], ref["kind"]) and \
                kube.get(ref["apiVersion"], ref["kind"], ref["name"], ref["namespace"]):
            kube.delete(ref["apiVersion"], ref["kind"], ref["name"], ref["namespace"])
            removed.append(f"{ref['kind']}/{ref['name']}")
    shard_name = body["spec"]["target"].get("shardRef")
    if shard_name:
        namespace = meta["namespace"]  # shardRef names a Shard of the experiment's namespace
        shard = kube.get(API_VERSION, "Shard", shard_name, namespace)
        annotations = ((shard or {}).get("metadata") or {}).get("annotations") or {}
        if annotations.get(desired.REQUESTED_BY_ANNOTATION) == meta["name"]:
            kube.patch_annotations(API_VERSION, "Shard", shard_name, namespace,
                                   {SWITCHOVER_ANNOTATION: None, desired.REQUESTED_BY_ANNOTATION: None})
            removed.append(f"switchover request on Shard/{shard_name}")
    return removed


def primary_write(shard: dict, seconds: float = 10.0) -> dt.datetime | None:
    """When the Shard's `-primary` Service first had a ready endpoint that committed a write
    (a row in pim_chaos_probe, acknowledged as the Shard's synchronous commit requires); None
    if not within `seconds`."""
    import psycopg  # imported here: a heavy driver that only a sqlFailover's write probe needs

    meta = shard["metadata"]
    service = kube.get("v1", "Service", f"{meta['name']}-primary", meta["namespace"])
    secret = kube.get("v1", "Secret", (shard.get("status") or {}).get("credentialsSecretName")
                      or f"{meta['name']}-credentials", meta["namespace"])
    if not service or not secret or not (service.get("spec") or {}).get("clusterIP"):
        return None
    data = {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}
    port = service["spec"]["ports"][0]["port"]
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if _ready_endpoint(meta["name"], meta["namespace"]):
            try:
                with psycopg.connect(host=service["spec"]["clusterIP"], port=port, dbname="pim",
                                     user=data.get("username", "pim"), password=data.get("password", ""),
                                     connect_timeout=2, autocommit=True) as conn:
                    conn.execute("CREATE TABLE IF NOT EXISTS pim_chaos_probe (at timestamptz NOT NULL DEFAULT now())")
                    conn.execute("INSERT INTO pim_chaos_probe DEFAULT VALUES")
                return dt.datetime.now(dt.timezone.utc)
            except psycopg.Error:
                pass
        time.sleep(0.25)
    return None


def _ready_endpoint(shard_name: str, namespace: str) -> bool:
    endpoints = kube.get("v1", "Endpoints", f"{shard_name}-primary", namespace)
    return any(subset.get("addresses") for subset in (endpoints or {}).get("subsets") or [])

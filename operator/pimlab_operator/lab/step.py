"""Lab -> the application tier (Deployments, Services, PDBs, HPAs, shard map, ServiceMonitor)."""

from __future__ import annotations

import json

from api_services.catalog import COMPONENTS
from pimlab_operator import kube, reconcile
from pimlab_operator.lab import desired, status
from pimlab_operator.lab.model import LabSpec
from pimlab_operator.objects import dev_issuer_secret, label_selector, selector_matches, selector_string
from pimlab_operator.reconcile import ChildKind
from pimlab_operator.render import owner_labels
from pimlab_operator.schema import API_VERSION

SERVICE_MONITOR = ChildKind("monitoring.coreos.com/v1", "ServiceMonitor", optional=True)
CHILDREN = (
    ChildKind("v1", "ConfigMap"), ChildKind("v1", "Secret"), ChildKind("apps/v1", "Deployment"),
    ChildKind("v1", "Service"),
    ChildKind("policy/v1", "PodDisruptionBudget"), ChildKind("autoscaling/v2", "HorizontalPodAutoscaler"),
    SERVICE_MONITOR,
)


def _previous_shard_map(name: str, namespace: str) -> dict | None:
    current = kube.get("v1", "ConfigMap", f"{name}-shard-map", namespace)
    if not current:
        return None
    return json.loads((current.get("data") or {}).get("shard-map.json", "null"))


def _selected_shards(body: dict, spec: LabSpec) -> list[dict]:
    namespace = body["metadata"]["namespace"]
    selector = spec.shard_selector.to_k8s() if spec.shard_selector else None
    shards = kube.list_objects(API_VERSION, "Shard", namespace, selector_string(selector))  # filtered by the apiserver
    return [s for s in shards if selector_matches(selector, s["metadata"].get("labels"))]


def step(body: dict, spec: LabSpec) -> None:
    name, namespace = body["metadata"]["name"], body["metadata"]["namespace"]
    shards = _selected_shards(body, spec)
    shard_map = desired.shard_map(shards, namespace, _previous_shard_map(name, namespace))
    with_monitor = kube.kind_exists(SERVICE_MONITOR.api_version, SERVICE_MONITOR.kind)
    # The dev issuer's key is generated once; afterwards it is kept, never rewritten or pruned
    # (a new key would invalidate every token the engines and users hold).
    issuer = dev_issuer_secret(name)
    issuer_exists = spec.auth is None and kube.get("v1", "Secret", issuer, namespace) is not None
    pem = desired.generate_dev_issuer_key() if spec.auth is None and not issuer_exists else None
    children = desired.desired_children(body, spec, shard_map, with_monitor, pem)
    keep = (("v1", "Secret", issuer),) if issuer_exists else ()
    reconcile.apply_children(body, children, prune=CHILDREN, keep=keep)
    # One list of the Lab's Deployments rather than a read per component.
    found = {d["metadata"]["name"]: d for d in kube.list_objects(
        "apps/v1", "Deployment", namespace, label_selector(owner_labels(body)))}
    deployments = {c.name: found.get(f"{name}-{c.name}") for c in COMPONENTS}
    observed, wanted = status.lab_status(body, spec, shard_map, deployments, shards)
    reconcile.write_status(body, observed, wanted)

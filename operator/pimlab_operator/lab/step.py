"""Lab -> the application tier (Deployments, Services, PDBs, HPAs, shard map, ServiceMonitor)."""

from __future__ import annotations

import json

from api_services.catalog import COMPONENTS
from pimlab_operator import kube, reconcile
from pimlab_operator.lab import desired
from pimlab_operator.lab.model import LabSpec
from pimlab_operator.objects import selector_matches
from pimlab_operator.reconcile import ChildKind
from pimlab_operator.schema import API_VERSION

SERVICE_MONITOR = ChildKind("monitoring.coreos.com/v1", "ServiceMonitor", optional=True)
CHILDREN = (
    ChildKind("v1", "ConfigMap"), ChildKind("apps/v1", "Deployment"), ChildKind("v1", "Service"),
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
    shards = kube.list_objects(API_VERSION, "Shard", namespace)
    return [s for s in shards if selector_matches(selector, s["metadata"].get("labels"))]


def step(body: dict, spec: LabSpec) -> None:
    name, namespace = body["metadata"]["name"], body["metadata"]["namespace"]
    shard_map = desired.shard_map(_selected_shards(body, spec), namespace, _previous_shard_map(name, namespace))
    with_monitor = kube.kind_exists(SERVICE_MONITOR.api_version, SERVICE_MONITOR.kind)
    children = desired.desired_children(body, spec, shard_map, with_monitor)
    reconcile.apply_children(body, children, prune=CHILDREN)
    deployments = {c.name: kube.get("apps/v1", "Deployment", f"{name}-{c.name}", namespace)
                   for c in COMPONENTS}
    fields, wanted = desired.lab_status(body, spec, shard_map, deployments)
    reconcile.write_status(body, fields, wanted)

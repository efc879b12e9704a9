"""Lab -> the application tier (Deployments, Services, PDBs, HPAs, shard map, ServiceMonitor)."""

from __future__ import annotations

import json

from pimlab_operator import kube, lab, reconcile

KIND = "Lab"
SERVICE_MONITOR = ("monitoring.coreos.com/v1", "ServiceMonitor")


def _previous_shard_map(name: str, namespace: str) -> dict | None:
    current = kube.get("v1", "ConfigMap", f"{name}-shard-map", namespace)
    if not current:
        return None
    return json.loads((current.get("data") or {}).get("shard-map.json", "null"))


def _selected_shards(body: dict) -> list[dict]:
    namespace = body["metadata"]["namespace"]
    selector = body["spec"].get("shardSelector")
    shards = kube.list_objects(f"{kube.GROUP}/{kube.VERSION}", "Shard", namespace)
    return [s for s in shards if lab.selector_matches(selector, s["metadata"].get("labels"))]


def step(body: dict) -> None:
    name, namespace = body["metadata"]["name"], body["metadata"]["namespace"]
    shard_map = lab.shard_map(_selected_shards(body), namespace, _previous_shard_map(name, namespace))
    with_monitor = kube.kind_exists(*SERVICE_MONITOR)
    reconcile.apply_children(KIND, lab.desired_children(body, shard_map, with_monitor))
    deployments = {
        component: kube.get("apps/v1", "Deployment", f"{name}-{component}", namespace)
        for component in lab.COMPONENTS.values()
    }
    fields, wanted = lab.lab_status(body, shard_map, deployments)
    reconcile.write_status(body, fields, wanted)


# Level-based: a deleted child or a missed event is repaired on the next tick.
reconcile.register(KIND, "labs", step, resync_seconds=20, idle_seconds=5)

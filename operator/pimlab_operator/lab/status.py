"""What a Lab reports, computed purely from its spec, its shard map, its Deployments and the
Shards it routes to.

A Lab is Ready when every service is ready, the shard map covers every slot once, and every
Shard in the map is Ready by its own Ready condition: the services cannot serve a request
without their shards.
"""

from __future__ import annotations

from pydantic.alias_generators import to_snake

from api_services.catalog import COMPONENTS
from pimlab_operator.conditions import Condition
from pimlab_operator.lab.desired import SLOT_COUNT, slot_coverage
from pimlab_operator.lab.model import LabSpec, LabStatus, ServiceSpec, ServiceStatus
from pimlab_operator.objects import gateway_url, ready_condition

#: How many not-ready Shards a message names before it says "and N more".
NAMED_SHARDS = 5


def service_status(key: str, service: ServiceSpec, deployment: dict | None) -> ServiceStatus:
    """One service as observed: desired replicas (the HPA's when it scales) and ready ones."""
    wanted = (deployment or {}).get("spec", {}).get("replicas")
    if wanted is None:
        wanted = service.autoscaling.min_replicas if service.autoscaling else service.replicas
    ready = ((deployment or {}).get("status") or {}).get("readyReplicas") or 0
    return ServiceStatus(name=key, replicas=wanted, ready_replicas=ready,
                         ready=deployment is not None and ready >= wanted)


def _shard_ready(shard: dict) -> tuple[bool, str]:
    """A Shard's own Ready condition: whether it holds, and its reason."""
    condition = ready_condition(shard)
    if condition is None:
        return False, "NoStatusYet"
    return condition.get("status") == "True", condition.get("reason") or "Unknown"


def shards_ready(entries: list[dict], shards: list[dict]) -> Condition:
    """ShardsReady: every Shard in the shard map (`entries`) is Ready; the message names the
    ones that are not, each with its Ready reason."""
    if not entries:
        return Condition("ShardsReady", False, "NoShardsSelected", "the shard map names no Shard")
    by_name = {s["metadata"]["name"]: s for s in shards}
    waiting = []
    for entry in entries:
        shard = by_name.get(entry["name"])
        ready, reason = _shard_ready(shard) if shard else (False, "NotFound")
        if not ready:
            waiting.append(f"{entry['name']} ({reason})")
    if not waiting:
        return Condition("ShardsReady", True, "AllShardsReady", f"{len(entries)} shards ready")
    named = ", ".join(waiting[:NAMED_SHARDS]) + (f" and {len(waiting) - NAMED_SHARDS} more"
                                                  if len(waiting) > NAMED_SHARDS else "")
    return Condition("ShardsReady", False, "ShardsNotReady",
                     f"{len(waiting)}/{len(entries)} shards not Ready: {named}")


def _shards_failed(entries: list[dict], shards: list[dict]) -> bool:
    """Whether a Shard in the map reports itself Degraded or Failed (rather than on its way up)."""
    names = {entry["name"] for entry in entries}
    return any((s.get("status") or {}).get("phase") in ("Degraded", "Failed")
               for s in shards if s["metadata"]["name"] in names)


def lab_status(lab: dict, spec: LabSpec, shard_map_body: dict, deployments: dict[str, dict | None],
               shards: list[dict]) -> tuple[LabStatus, list[Condition]]:
    """Status and conditions from what the cluster reports about the children and the Shards
    in the shard map."""
    name, namespace = lab["metadata"]["name"], lab["metadata"]["namespace"]
    services = [service_status(c.key, getattr(spec.services, to_snake(c.key)), deployments.get(c.name))
                for c in COMPONENTS]
    not_ready = [s.name for s in services if not s.ready]
    entries = shard_map_body["shards"]
    owned_slots, overlaps = slot_coverage(entries)
    if overlaps:
        degraded = Condition("Degraded", True, "ShardSlotsOverlap", "; ".join(overlaps[:3]))
    elif owned_slots < SLOT_COUNT:
        degraded = Condition(
            "Degraded", True, "ShardSlotsUncovered",
            f"{SLOT_COUNT - owned_slots} of {SLOT_COUNT} hash slots have no Shard "
            f"({len(entries)} shards selected)")
    else:
        degraded = Condition("Degraded", False, "ShardMapComplete",
                             f"{len(entries)} shards own all {SLOT_COUNT} slots")
    shards_condition = shards_ready(entries, shards)
    if not_ready:
        phase = "Progressing"
        ready = Condition("Ready", False, "ServicesNotReady", f"waiting for {', '.join(not_ready)}")
        progressing = Condition("Progressing", True, "RollingOut",
                                f"{len(services) - len(not_ready)}/{len(services)} services ready")
    else:
        progressing = Condition("Progressing", False, "RolledOut", "every service is up to date")
        if degraded.status:
            phase, ready = "Degraded", Condition("Ready", False, degraded.reason, degraded.message)
        elif not shards_condition.status:
            # Shards on their way up leave the Lab Pending; a Shard that reports itself
            # Degraded or Failed makes the Lab Degraded.
            phase = "Degraded" if _shards_failed(entries, shards) else "Pending"
            ready = Condition("Ready", False, shards_condition.reason, shards_condition.message)
        else:
            phase = "Ready"
            ready = Condition("Ready", True, "AllServicesReady",
                              f"{len(services)} services ready, {len(entries)} shards ready, "
                              f"shard map v{shard_map_body['version']}")
    status = LabStatus(
        phase=phase,
        phase_reason=ready.message[:1024],
        endpoints={"gateway": gateway_url(name, namespace)},
        shard_map_version=str(shard_map_body["version"]),
        shards=[entry["name"] for entry in entries],
        ready_services=len(services) - len(not_ready),
        total_services=len(services),
        services=services,
    )
    return status, [ready, progressing, degraded, shards_condition]

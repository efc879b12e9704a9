"""What a Lab should be, computed purely from its spec and the namespace's Shards.

The handler gathers the inputs (the Lab, its Shards, the previous shard map, which optional
kinds exist), calls `desired_children`, applies the result and writes `lab_status`.
"""

from __future__ import annotations

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from api_services.catalog import COMPONENTS, CONTAINER_PORT, POD_FAULTS_FILE, ROUTED, SERVICE_PORT
from pimlab_operator.conditions import Condition
from pimlab_operator.lab.model import LabSpec
from pimlab_operator.objects import DEV_ISSUER_DIR, dev_issuer_secret, gateway_url
from pimlab_operator.render import owned, render

SLOT_COUNT = 1024
SQL_PORT = 1433
PG_PORT = 5432
DATABASE = "pim"


def shard_entries(shards: list[dict], namespace: str) -> list[dict]:
    """The shard map's body: one entry per Shard, ordered by ordinal."""
    entries = []
    for shard in sorted(shards, key=lambda s: s["spec"]["ordinal"]):
        name, spec = shard["metadata"]["name"], shard["spec"]
        secret = (spec.get("credentialsSecretRef") or {}).get("name") or f"{name}-credentials"
        engine = spec.get("engine") or "sqlserver"
        port = PG_PORT if engine == "postgres" else SQL_PORT
        entries.append({
            "name": name,
            "ordinal": spec["ordinal"],
            "engine": engine,
            "slots": {"start": spec["slots"]["start"], "end": spec["slots"]["end"]},
            "primary": {"host": f"{name}-primary.{namespace}.svc", "port": port},
            "readonly": {"host": f"{name}-readonly.{namespace}.svc", "port": port},
            "database": DATABASE,
            "credentialsSecret": secret,
        })
    return entries


def shard_map(shards: list[dict], namespace: str, previous: dict | None) -> dict:
    """The versioned map; the version moves only when the shards' entries change."""
    entries = shard_entries(shards, namespace)
    version = (previous or {}).get("version", 0)
    if previous is None or previous.get("shards") != entries:
        version += 1
    return {"version": version, "slotCount": SLOT_COUNT, "shards": entries}


def slot_coverage(entries: list[dict]) -> tuple[int, list[str]]:
    """How many of the slots are owned, and any slot owned twice (a misconfiguration)."""
    owner: dict[int, str] = {}
    overlaps = []
    for entry in entries:
        for slot in range(entry["slots"]["start"], entry["slots"]["end"] + 1):
            if slot in owner:
                overlaps.append(f"slot {slot}: {owner[slot]} and {entry['name']}")
            owner.setdefault(slot, entry["name"])
    return len(owner), overlaps


DEFAULT_RESOURCES = {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}}


def generate_dev_issuer_key() -> str:
    """A new ES256 signing key (PKCS#8 PEM) for the lab's development token issuer."""
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def desired_children(lab: dict, spec: LabSpec, shard_map_body: dict, with_service_monitor: bool,
                     dev_issuer_pem: str | None = None) -> list[dict]:
    """Every child of the Lab; a ServiceMonitor only when its CRD exists and the spec wants it.
    Without `spec.auth` the services trust the lab's development issuer, whose key Secret is
    included only when `dev_issuer_pem` is given (generated once, like a Shard's password)."""
    spec = spec.to_k8s()
    observability = spec.get("observability") or {}
    name = lab["metadata"]["name"]
    secrets = sorted({entry["credentialsSecret"] for entry in shard_map_body["shards"]})
    dev_issuer = None if spec.get("auth") else dev_issuer_secret(name)
    children = render("lab/shard-map.yaml.j2", lab_name=name, shard_map=shard_map_body)
    if dev_issuer and dev_issuer_pem:
        children += render("lab/dev-issuer.yaml.j2", secret_name=dev_issuer, pem=dev_issuer_pem,
                           labels={"app.kubernetes.io/instance": name, "app.kubernetes.io/part-of": "pim-sre-lab"})
    for component in COMPONENTS:
        children += render(
            "lab/component.yaml.j2",
            lab_name=name, component=component.name,
            service={"resources": DEFAULT_RESOURCES, **spec["services"][component.key]},
            image=spec["image"], image_pull_policy=spec["imagePullPolicy"], port=CONTAINER_PORT,
            service_port=SERVICE_PORT, auth=spec.get("auth") or {}, observability=observability,
            downstreams=ROUTED,
            credential_secrets=secrets, shard_map_version=shard_map_body["version"],
            dev_issuer_secret=dev_issuer, dev_issuer_dir=DEV_ISSUER_DIR,
            faults_file=POD_FAULTS_FILE if spec.get("faultInjection") else None,
        )
    if with_service_monitor and observability.get("serviceMonitor", True):
        children += render("lab/servicemonitor.yaml.j2", lab_name=name)
    return owned(children, lab)


def service_status(key: str, service: dict, deployment: dict | None) -> dict:
    """One service as observed: desired replicas (the HPA's when it scales) and ready ones."""
    wanted = (deployment or {}).get("spec", {}).get("replicas")
    if wanted is None:
        wanted = (service.get("autoscaling") or {}).get("minReplicas", service.get("replicas", 1))
    ready = ((deployment or {}).get("status") or {}).get("readyReplicas") or 0
    return {"name": key, "replicas": wanted, "readyReplicas": ready,
            "ready": deployment is not None and ready >= wanted}


def lab_status(lab: dict, spec: LabSpec, shard_map_body: dict, deployments: dict[str, dict | None]
               ) -> tuple[dict, list[Condition]]:
    """Status fields and conditions from what the cluster reports about the children."""
    spec = spec.to_k8s()
    name, namespace = lab["metadata"]["name"], lab["metadata"]["namespace"]
    services = [service_status(c.key, spec["services"][c.key], deployments.get(c.name))
                for c in COMPONENTS]
    not_ready = [s["name"] for s in services if not s["ready"]]
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
    if not_ready:
        phase = "Progressing"
        ready = Condition("Ready", False, "ServicesNotReady", f"waiting for {', '.join(not_ready)}")
        progressing = Condition("Progressing", True, "RollingOut",
                                f"{len(services) - len(not_ready)}/{len(services)} services ready")
    else:
        phase = "Degraded" if degraded.status else "Ready"
        ready = Condition("Ready", not degraded.status,
                          degraded.reason if degraded.status else "AllServicesReady",
                          degraded.message if degraded.status else
                          f"{len(services)} services ready, shard map v{shard_map_body['version']}")
        progressing = Condition("Progressing", False, "RolledOut", "every service is up to date")
    status = {
        "phase": phase,
        "phaseReason": ready.message,
        "endpoints": {"gateway": gateway_url(name, namespace)},
        "shardMapVersion": str(shard_map_body["version"]),
        "shards": [entry["name"] for entry in entries],
        "readyServices": len(services) - len(not_ready),
        "totalServices": len(services),
        "services": services,
    }
    return status, [ready, progressing, degraded]

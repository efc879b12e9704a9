"""What a Lab should have, computed purely from its spec and the namespace's Shards: its
children and the shard map they carry.

The handler gathers the inputs (the Lab, its Shards, the previous shard map, which optional
kinds exist), calls `desired_children` and applies the result; status.py says how it went.
"""

from __future__ import annotations

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from api_services.catalog import COMPONENTS, CONTAINER_PORT, POD_FAULTS_FILE, ROUTED, SERVICE_PORT
from pimlab_operator.lab.model import LabSpec
from pimlab_operator.objects import DEV_ISSUER_DIR, dev_issuer_secret
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
    name = lab["metadata"]["name"]
    services = spec.services.to_k8s()  # the template renders each service's fields as written
    secrets = sorted({entry["credentialsSecret"] for entry in shard_map_body["shards"]})
    dev_issuer = None if spec.auth else dev_issuer_secret(name)
    children = render("lab/shard-map.yaml.j2", lab_name=name, shard_map=shard_map_body)
    if dev_issuer and dev_issuer_pem:
        children += render("lab/dev-issuer.yaml.j2", secret_name=dev_issuer, pem=dev_issuer_pem,
                           labels={"app.kubernetes.io/instance": name, "app.kubernetes.io/part-of": "pim-sre-lab"})
    for component in COMPONENTS:
        children += render(
            "lab/component.yaml.j2",
            lab_name=name, component=component.name,
            service={"resources": DEFAULT_RESOURCES, **services[component.key]},
            image=spec.image, image_pull_policy=spec.image_pull_policy, port=CONTAINER_PORT,
            service_port=SERVICE_PORT, auth=spec.auth.to_k8s() if spec.auth else {},
            observability=spec.observability.to_k8s(), downstreams=ROUTED,
            credential_secrets=secrets, shard_map_version=shard_map_body["version"],
            dev_issuer_secret=dev_issuer, dev_issuer_dir=DEV_ISSUER_DIR,
            faults_file=POD_FAULTS_FILE if spec.fault_injection else None,
        )
    if with_service_monitor and spec.observability.service_monitor:
        children += render("lab/servicemonitor.yaml.j2", lab_name=name)
    return owned(children, lab)

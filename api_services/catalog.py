"""The lab's components, defined once: the operator's `Lab.spec.services`, the CRD's enum of
service names, the Deployments it renders and `pimlab serve --service` all derive from here."""

from __future__ import annotations

from dataclasses import dataclass

#: The port every component listens on inside its pod.
CONTAINER_PORT = 8080
#: The port of every component's Service (so `http://<lab>-gateway.<ns>.svc` needs no port).
SERVICE_PORT = 80
#: Where a Lab with `spec.faultInjection: true` has its services read injected faults
#: (`PIM_FAULTS_FILE`, api_services/faults.py): the pods' writable /tmp.
POD_FAULTS_FILE = "/tmp/pim-faults.json"


@dataclass(frozen=True)
class Component:
    key: str  # its key in Lab.spec.services (camelCase)
    name: str  # its process role and the suffix of its Deployment/Service
    summary: str  # what it does, for `kubectl explain`
    replicas: int  # default replicas
    routed: bool = False  # the gateway forwards requests to it
    worker: bool = False  # a background worker (no routes of its own)


COMPONENTS = (
    Component("gateway", "gateway", "API gateway: JWT auth, shard routing, request tagging.", 2),
    Component("patient", "patient", "Patient service.", 2, routed=True),
    Component("encounter", "encounter", "Encounter service (bookings, clinical notes).", 2, routed=True),
    Component("billing", "billing", "Billing service (claims).", 1, routed=True),
    Component("admin", "admin", "Admin service (KPIs, rebuild from events).", 1, routed=True),
    Component("outboxRelay", "outbox-relay", "Outbox relay: publishes committed outbox events.", 1,
              worker=True),
    Component("projectionWorker", "projection-worker",
              "Projection worker: builds read models such as financial KPIs.", 1, worker=True),
)

#: Component names (process roles), in order.
NAMES = tuple(c.name for c in COMPONENTS)
#: Components the gateway routes to.
ROUTED = tuple(c.name for c in COMPONENTS if c.routed)
#: Background workers.
WORKERS = frozenset(c.name for c in COMPONENTS if c.worker)


def service_host(lab: str, component: str, namespace: str | None = None) -> str:
    """A component's Service name, qualified with `.<ns>.svc` when the namespace is given."""
    return f"{lab}-{component}" + (f".{namespace}.svc" if namespace else "")

"""The operator's only door to the apiserver: server-side apply under one field manager,
status through the status subresource, and discovery of optional third-party kinds."""

from __future__ import annotations

import os
import tempfile
import threading
from functools import lru_cache

import kubernetes
from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.exceptions import NotFoundError, ResourceNotFoundError

GROUP, VERSION = "pim-sre.lab", "v1alpha1"
FIELD_MANAGER = "pimlab-operator"
MANAGED_BY = {"app.kubernetes.io/managed-by": FIELD_MANAGER}

_lock = threading.Lock()


@lru_cache(maxsize=1)
def _api_client() -> kubernetes.client.ApiClient:
    try:
        kubernetes.config.load_incluster_config()
    except kubernetes.config.ConfigException:
        # $KUBECONFIG read now: the library reads it once, at import, which may be too early.
        kubernetes.config.load_kube_config(config_file=os.environ.get("KUBECONFIG"))
    return kubernetes.client.ApiClient()


@lru_cache(maxsize=1)
def dynamic() -> DynamicClient:
    """A dynamic client whose discovery cache is private to this process: the library's
    default file is shared by every process of the machine and outlives the cluster."""
    cache = os.path.join(tempfile.gettempdir(), f"pimlab-discovery-{os.getpid()}.json")
    with _lock:
        return DynamicClient(_api_client(), cache_file=cache)


def resource(api_version: str, kind: str):
    """The dynamic resource for a kind; rediscovers once, since CRDs may appear at any time."""
    try:
        return dynamic().resources.get(api_version=api_version, kind=kind)
    except ResourceNotFoundError:
        dynamic().resources.invalidate_cache()
        return dynamic().resources.get(api_version=api_version, kind=kind)


def kind_exists(api_version: str, kind: str) -> bool:
    """Asked of the apiserver every time: optional CRDs come and go while we run."""
    path = f"/apis/{api_version}" if "/" in api_version else f"/api/{api_version}"
    try:
        found = dynamic().request("get", path).to_dict()
    except NotFoundError:
        return False
    return any(r.get("kind") == kind for r in found.get("resources", []))


def apply(manifest: dict, dry_run: bool = False) -> dict:
    """Server-side apply: idempotent, and the fields we own are exactly the ones we send."""
    res = resource(manifest["apiVersion"], manifest["kind"])
    kwargs = {"dry_run": "All"} if dry_run else {}
    result = res.server_side_apply(
        body=manifest,
        name=manifest["metadata"]["name"],
        namespace=manifest["metadata"].get("namespace"),
        field_manager=FIELD_MANAGER,
        force_conflicts=True,
        **kwargs,
    )
    return result.to_dict()


def get(api_version: str, kind: str, name: str, namespace: str | None) -> dict | None:
    try:
        return resource(api_version, kind).get(name=name, namespace=namespace).to_dict()
    except NotFoundError:
        return None


def list_objects(api_version: str, kind: str, namespace: str, label_selector: str = "") -> list[dict]:
    found = resource(api_version, kind).get(namespace=namespace, label_selector=label_selector)
    return [item.to_dict() for item in found.items]


def delete(api_version: str, kind: str, name: str, namespace: str | None,
           options: dict | None = None) -> None:
    """Delete with DeleteOptions (grace period, propagation); already gone counts as done."""
    try:
        resource(api_version, kind).delete(name=name, namespace=namespace, body=options or {})
    except NotFoundError:
        pass


def patch_labels(api_version: str, kind: str, name: str, namespace: str | None,
                 labels: dict[str, str | None]) -> dict | None:
    """Merge-patch only the given labels (None removes one); None when the object is gone."""
    try:
        return resource(api_version, kind).patch(
            body={"metadata": {"labels": labels}}, name=name, namespace=namespace,
            content_type="application/merge-patch+json").to_dict()
    except NotFoundError:
        return None


def patch_status(kind: str, name: str, namespace: str, status: dict) -> None:
    """Write our computed status through the status subresource. A JSON merge patch replaces
    lists whole, so conditions are always written as one computed list, never merged."""
    kubernetes.client.CustomObjectsApi(_api_client()).patch_namespaced_custom_object_status(
        GROUP, VERSION, namespace, PLURALS[kind], name, {"status": status})


PLURALS = {"Lab": "labs", "Shard": "shards", "PersonaLoad": "personaloads",
           "ChaosExperiment": "chaosexperiments", "SLO": "slos"}

"""The operator's only door to the apiserver: server-side apply under one field manager,
status through the status subresource, and discovery of optional third-party kinds."""

from __future__ import annotations

import datetime
import os
import tempfile
import threading
import time
from functools import lru_cache

import kubernetes
from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.exceptions import NotFoundError, ResourceNotFoundError, UnprocessibleEntityError

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


def _as_dict(_client, data: dict) -> dict:
    """The dynamic client's serializer, for plain dicts: its default wraps every answer in
    ResourceInstance/ResourceField objects that we turned straight back into dicts, which cost
    more CPU than the request itself for a list of a few hundred objects."""
    return data


def resource(api_version: str, kind: str):
    """The dynamic resource for a kind; rediscovers once, since CRDs may appear at any time."""
    try:
        return dynamic().resources.get(api_version=api_version, kind=kind)
    except ResourceNotFoundError:
        dynamic().resources.invalidate_cache()
        return dynamic().resources.get(api_version=api_version, kind=kind)


#: How long an answer of discovery is reused: optional CRDs come and go while we run, so an
#: installed or removed CRD is noticed within this delay, not one request per reconcile.
DISCOVERY_TTL_SECONDS = 10.0
_discovered: dict[str, tuple[float, frozenset[str]]] = {}


def kind_exists(api_version: str, kind: str) -> bool:
    """Whether the apiserver serves `kind`, from a discovery answer at most
    DISCOVERY_TTL_SECONDS old (per group version)."""
    seen = _discovered.get(api_version)
    if seen is None or time.monotonic() - seen[0] > DISCOVERY_TTL_SECONDS:
        path = f"/apis/{api_version}" if "/" in api_version else f"/api/{api_version}"
        try:
            found = dynamic().request("get", path, serializer=_as_dict)
            kinds = frozenset(r.get("kind") for r in found.get("resources", []))
        except NotFoundError:
            kinds = frozenset()
        seen = _discovered[api_version] = (time.monotonic(), kinds)
    return kind in seen[1]


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
        serializer=_as_dict,
        **kwargs,
    )
    return result


def get(api_version: str, kind: str, name: str, namespace: str | None) -> dict | None:
    try:
        return resource(api_version, kind).get(name=name, namespace=namespace, serializer=_as_dict)
    except NotFoundError:
        return None


def list_objects(api_version: str, kind: str, namespace: str, label_selector: str = "") -> list[dict]:
    found = resource(api_version, kind).get(namespace=namespace, label_selector=label_selector,
                                            serializer=_as_dict)
    return found.get("items") or []


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
            content_type="application/merge-patch+json", serializer=_as_dict)
    except NotFoundError:
        return None


def patch_annotations(api_version: str, kind: str, name: str, namespace: str | None,
                      annotations: dict[str, str | None]) -> dict | None:
    """Merge-patch only the given annotations (None removes one); None when the object is gone."""
    try:
        return resource(api_version, kind).patch(
            body={"metadata": {"annotations": annotations}}, name=name, namespace=namespace,
            content_type="application/merge-patch+json", serializer=_as_dict)
    except NotFoundError:
        return None


def set_finalizer(body: dict, finalizer: str, present: bool, attempts: int = 3) -> dict | None:
    """Add or remove one finalizer, keeping the others (kopf's own among them): a JSON patch
    that first tests the list it read, so a concurrent change is never overwritten; a failed
    test is read again and retried. None when the object is gone."""
    res = resource(body["apiVersion"], body["kind"])
    meta = body["metadata"]
    for _ in range(attempts):
        current = list(meta.get("finalizers") or [])
        if (finalizer in current) == present:
            return body
        wanted = [*current, finalizer] if present else [f for f in current if f != finalizer]
        ops = ([{"op": "test", "path": "/metadata/finalizers", "value": current}] if "finalizers" in meta else []) + \
            [{"op": "add", "path": "/metadata/finalizers", "value": wanted}]
        try:
            return res.patch(body=ops, name=meta["name"], namespace=meta["namespace"],
                             content_type="application/json-patch+json", serializer=_as_dict)
        except NotFoundError:
            return None
        except UnprocessibleEntityError:  # the list changed since it was read
            body = get(body["apiVersion"], body["kind"], meta["name"], meta["namespace"])
            if body is None:
                return None
            meta = body["metadata"]
    raise RuntimeError(f"the finalizers of {meta['name']} kept changing under {attempts} attempts")


def post_event(body: dict, type_: str, reason: str, message: str) -> None:
    """A core/v1 Event about `body`, from the operator (what `kubectl describe` shows)."""
    meta = body["metadata"]
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    resource("v1", "Event").create(namespace=meta["namespace"], body={
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
        "involvedObject": {"apiVersion": body["apiVersion"], "kind": body["kind"], "name": meta["name"],
                           "namespace": meta["namespace"], "uid": meta["uid"]},
        "type": type_, "reason": reason, "message": message[:1024], "count": 1,
        "firstTimestamp": stamp, "lastTimestamp": stamp,
        "source": {"component": FIELD_MANAGER}, "reportingComponent": FIELD_MANAGER,
    })


def apply_status(body: dict, status: dict) -> dict:
    """Server-side apply of our status fields through the status subresource, guarded by the
    resourceVersion `body` was read at: if anyone wrote the object since (another operator
    replica, kopf, a restart after a kill mid-write), the apiserver answers 409 Conflict and
    nothing is overwritten. Fields we wrote before and leave out now are removed."""
    meta = body["metadata"]
    res = resource(body["apiVersion"], body["kind"])
    patch = {"apiVersion": body["apiVersion"], "kind": body["kind"], "status": status,
             "metadata": {"name": meta["name"], "namespace": meta["namespace"],
                          "resourceVersion": meta["resourceVersion"]}}
    return res.subresources["status"].server_side_apply(
        body=patch, name=meta["name"], namespace=meta["namespace"],
        field_manager=FIELD_MANAGER, force_conflicts=True, serializer=_as_dict)

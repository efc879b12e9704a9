"""The operator's only door to the apiserver: server-side apply under one field manager,
status through the status subresource, and discovery of optional third-party kinds.

Plain HTTP with JSON in and out (urllib3, one connection pool shared by the worker threads):
the kubernetes client library would cost the operator a third of its memory (its ~700 model
classes, imported whole) for calls that are a URL and a dict each. Configuration is the pod's
ServiceAccount in a cluster, else a kubeconfig (token or client certificate): `config.ApiServer`,
given once at start (`connect`).
"""

from __future__ import annotations

import base64
import datetime
import json
import os
import ssl
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlencode

import urllib3
import yaml

from pimlab_operator.config import SERVICE_ACCOUNT, ApiServer, api_server

FIELD_MANAGER = "pimlab-operator"
MANAGED_BY = {"app.kubernetes.io/managed-by": FIELD_MANAGER}
#: How long one request may take; a watch is kopf's business, not this module's.
REQUEST_TIMEOUT = urllib3.Timeout(connect=10, read=60)
#: A ServiceAccount token file is rotated by the kubelet: read again at most this old.
TOKEN_REREAD_SECONDS = 60.0


class ApiError(Exception):
    """An answer other than 2xx; `body` is the apiserver's Status text (never a credential)."""

    def __init__(self, status: int, body: str, what: str):
        super().__init__(f"{what}: HTTP {status}: {body[:500]}")
        self.status, self.body = status, body


class NotFound(ApiError):
    pass


class Conflict(ApiError):
    pass


class Forbidden(ApiError):
    pass


_ERRORS = {404: NotFound, 409: Conflict, 403: Forbidden}


@dataclass
class _Connection:
    server: str
    pool: urllib3.PoolManager
    token: str | None = None
    token_file: Path | None = None
    token_read: float = 0.0

    def authorization(self) -> dict[str, str]:
        if self.token_file and time.monotonic() - self.token_read > TOKEN_REREAD_SECONDS:
            self.token, self.token_read = self.token_file.read_text().strip(), time.monotonic()
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}


def _private_file(data: str, suffix: str) -> str:
    """Inline (base64) certificate data as a file only this process can read: the TLS layer
    loads client certificates from files."""
    handle, path = tempfile.mkstemp(prefix="pimlab-kube-", suffix=suffix)
    with os.fdopen(handle, "wb") as out:
        out.write(base64.b64decode(data))
    return path


def _from_kubeconfig(path: Path) -> _Connection:
    config = yaml.safe_load(path.read_text()) or {}
    context_name = config.get("current-context")
    contexts = {c["name"]: c.get("context") or {} for c in config.get("contexts") or []}
    context = contexts.get(context_name) or next(iter(contexts.values()), {})
    cluster = next((c["cluster"] for c in config.get("clusters") or [] if c["name"] == context.get("cluster")), None)
    user = next((u.get("user") or {} for u in config.get("users") or [] if u["name"] == context.get("user")), {})
    if not cluster:
        raise RuntimeError(f"{path}: no cluster for context {context_name!r}")
    unsupported = {"exec", "auth-provider", "username"} & set(user)
    if unsupported:
        raise RuntimeError(f"{path}: user authentication by {sorted(unsupported)} is not supported (token or client certificate)")

    def local(name: str) -> str:
        return str((path.parent / name).resolve())

    tls = ssl.create_default_context()
    if cluster.get("insecure-skip-tls-verify"):
        tls.check_hostname, tls.verify_mode = False, ssl.CERT_NONE
    elif cluster.get("certificate-authority-data"):
        tls.load_verify_locations(cadata=base64.b64decode(cluster["certificate-authority-data"]).decode())
    elif cluster.get("certificate-authority"):
        tls.load_verify_locations(cafile=local(cluster["certificate-authority"]))
    cert = user.get("client-certificate") and local(user["client-certificate"])
    key = user.get("client-key") and local(user["client-key"])
    if user.get("client-certificate-data"):
        cert = _private_file(user["client-certificate-data"], ".crt")
        key = _private_file(user["client-key-data"], ".key")
        try:
            tls.load_cert_chain(cert, key)
        finally:  # loaded into memory: the private key never stays on disk
            os.unlink(cert)
            os.unlink(key)
    elif cert:
        tls.load_cert_chain(cert, key)
    connection = _Connection(cluster["server"].rstrip("/"), _pool(tls), token=user.get("token"))
    if user.get("tokenFile"):
        connection.token_file = Path(local(user["tokenFile"]))
    return connection


#: 429 is the apiserver's flow control turning a request away before doing anything with it,
#: with a Retry-After: such a request is sent again (any method), up to this many times, after
#: the Retry-After it names (at most a second or two of back-off when it names none).
THROTTLED_RETRIES = 8


def _pool(tls: ssl.SSLContext) -> urllib3.PoolManager:
    retries = urllib3.Retry(connect=3, read=0, redirect=0, status=THROTTLED_RETRIES, status_forcelist=(429,),
                            allowed_methods=None, respect_retry_after_header=True, backoff_factor=0.25,
                            backoff_max=2, raise_on_status=False)
    return urllib3.PoolManager(num_pools=2, maxsize=16, ssl_context=tls, timeout=REQUEST_TIMEOUT, retries=retries)


def _open(api: ApiServer) -> _Connection:
    if api.in_cluster_url:
        tls = ssl.create_default_context(cafile=str(SERVICE_ACCOUNT / "ca.crt"))
        return _Connection(api.in_cluster_url, _pool(tls), token_file=SERVICE_ACCOUNT / "token")
    return _from_kubeconfig(api.kubeconfig)


_connected: _Connection | None = None


def connect(api: ApiServer | None) -> None:
    """Send every request to `api` from now on (the operator, at start, with its settings').
    None forgets it: the next request finds the apiserver from the environment as it is then
    (the tools and tests that use this module without settings set $KUBECONFIG first)."""
    global _connected
    _connected = _open(api) if api else None


def _connection() -> _Connection:
    if _connected is None:
        connect(api_server())
    return _connected


_token_lock = threading.Lock()


def _send(method: str, path: str, query: dict | None, body: dict | None, content_type: str) -> bytes:
    """One call to the apiserver; the answer's bytes. Non-2xx raises ApiError (NotFound,
    Conflict, Forbidden for 404, 409, 403)."""
    connection = _connection()
    with _token_lock:
        headers = {"Accept": "application/json", **connection.authorization()}
    url = connection.server + path + (f"?{urlencode(query)}" if query else "")
    payload = None
    if body is not None:
        payload, headers["Content-Type"] = json.dumps(body).encode(), content_type
    response = connection.pool.request(method, url, body=payload, headers=headers)
    if response.status >= 300:
        text = response.data.decode(errors="replace")
        raise _ERRORS.get(response.status, ApiError)(response.status, text, f"{method} {path}")
    return response.data


def request(method: str, path: str, *, query: dict | None = None, body: dict | None = None,
            content_type: str = "application/json") -> dict:
    """One call to the apiserver; the decoded JSON answer (ApiError as `_send`)."""
    data = _send(method, path, query, body, content_type)
    return json.loads(data) if data else {}


def pod_log(name: str, namespace: str, since_time: str | None = None) -> str:
    """A pod's log (its first container's) as text, from `since_time` (RFC3339) on where given."""
    query = {"sinceTime": since_time} if since_time else None
    path = f"/api/v1/namespaces/{quote(namespace)}/pods/{quote(name)}/log"
    return _send("GET", path, query, None, "application/json").decode(errors="replace")


#: How long an answer of discovery is reused to say whether a kind is served: optional CRDs
#: come and go while we run, so an installed or removed CRD is noticed within this delay, not
#: one request per reconcile.
DISCOVERY_TTL_SECONDS = 10.0
#: apiVersion -> (when discovered, kind -> (plural, namespaced))
_discovered: dict[str, tuple[float, dict[str, tuple[str, bool]]]] = {}


def _group_path(api_version: str) -> str:
    return f"/apis/{api_version}" if "/" in api_version else f"/api/{api_version}"


def _discover(api_version: str) -> dict[str, tuple[str, bool]]:
    try:
        found = request("GET", _group_path(api_version))
        kinds = {r["kind"]: (r["name"], r.get("namespaced", False)) for r in found.get("resources", [])
                 if "/" not in r["name"]}  # subresources (status, scale) are not kinds of their own
    except NotFound:
        kinds = {}
    _discovered[api_version] = (time.monotonic(), kinds)
    return kinds


def kind_exists(api_version: str, kind: str) -> bool:
    """Whether the apiserver serves `kind`, from a discovery answer at most
    DISCOVERY_TTL_SECONDS old (per group version)."""
    seen = _discovered.get(api_version)
    if seen is None or time.monotonic() - seen[0] > DISCOVERY_TTL_SECONDS:
        return kind in _discover(api_version)
    return kind in seen[1]


def _path(api_version: str, kind: str, namespace: str | None, name: str | None = None) -> str:
    """The URL path of a kind's collection (or one object); discovers again once for a kind
    not seen before, since CRDs may appear at any time."""
    known = (_discovered.get(api_version) or (0, {}))[1]
    if kind not in known:
        known = _discover(api_version)
    if kind not in known:
        raise NotFound(404, f"the apiserver does not serve {kind} in {api_version}", "discovery")
    plural, namespaced = known[kind]
    path = _group_path(api_version)
    if namespaced and namespace:
        path += f"/namespaces/{quote(namespace)}"
    path += f"/{plural}"
    return f"{path}/{quote(name)}" if name else path


def apply(manifest: dict, dry_run: bool = False, field_manager: str = FIELD_MANAGER) -> dict:
    """Server-side apply: idempotent, and the fields we own are exactly the ones we send."""
    meta = manifest["metadata"]
    query = {"fieldManager": field_manager, "force": "true", **({"dryRun": "All"} if dry_run else {})}
    return request("PATCH", _path(manifest["apiVersion"], manifest["kind"], meta.get("namespace"), meta["name"]),
                   query=query, body=manifest, content_type="application/apply-patch+yaml")


def get(api_version: str, kind: str, name: str, namespace: str | None) -> dict | None:
    try:
        return request("GET", _path(api_version, kind, namespace, name))
    except NotFound:
        return None


def list_objects(api_version: str, kind: str, namespace: str, label_selector: str = "") -> list[dict]:
    query = {"labelSelector": label_selector} if label_selector else None
    return request("GET", _path(api_version, kind, namespace), query=query).get("items") or []


def delete(api_version: str, kind: str, name: str, namespace: str | None,
           options: dict | None = None) -> None:
    """Delete with DeleteOptions (grace period, propagation); already gone counts as done."""
    try:
        request("DELETE", _path(api_version, kind, namespace, name), body=options or {})
    except NotFound:
        pass


def patch_labels(api_version: str, kind: str, name: str, namespace: str | None,
                 labels: dict[str, str | None]) -> dict | None:
    """Merge-patch only the given labels (None removes one); None when the object is gone."""
    try:
        return request("PATCH", _path(api_version, kind, namespace, name), body={"metadata": {"labels": labels}},
                       content_type="application/merge-patch+json")
    except NotFound:
        return None


def patch_annotations(api_version: str, kind: str, name: str, namespace: str | None,
                      annotations: dict[str, str | None]) -> dict | None:
    """Merge-patch only the given annotations (None removes one); None when the object is gone."""
    try:
        return request("PATCH", _path(api_version, kind, namespace, name),
                       body={"metadata": {"annotations": annotations}},
                       content_type="application/merge-patch+json")
    except NotFound:
        return None


def set_finalizer(body: dict, finalizer: str, present: bool, attempts: int = 3) -> dict | None:
    """Add or remove one finalizer, keeping the others (kopf's own among them): a JSON patch
    that first tests the list it read, so a concurrent change is never overwritten; a failed
    test is read again and retried. None when the object is gone."""
    meta = body["metadata"]
    for _ in range(attempts):
        current = list(meta.get("finalizers") or [])
        if (finalizer in current) == present:
            return body
        wanted = [*current, finalizer] if present else [f for f in current if f != finalizer]
        ops = ([{"op": "test", "path": "/metadata/finalizers", "value": current}] if "finalizers" in meta else []) + \
            [{"op": "add", "path": "/metadata/finalizers", "value": wanted}]
        try:
            return request("PATCH", _path(body["apiVersion"], body["kind"], meta["namespace"], meta["name"]),
                           body=ops, content_type="application/json-patch+json")
        except NotFound:
            return None
        except ApiError as error:
            if error.status != 422:  # 422: the test failed, the list changed since it was read
                raise
            body = get(body["apiVersion"], body["kind"], meta["name"], meta["namespace"])
            if body is None:
                return None
            meta = body["metadata"]
    raise RuntimeError(f"the finalizers of {meta['name']} kept changing under {attempts} attempts")


def post_event(body: dict, type_: str, reason: str, message: str) -> None:
    """A core/v1 Event about `body`, from the operator (what `kubectl describe` shows)."""
    meta = body["metadata"]
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    request("POST", _path("v1", "Event", meta["namespace"]), body={
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
    patch = {"apiVersion": body["apiVersion"], "kind": body["kind"], "status": status,
             "metadata": {"name": meta["name"], "namespace": meta["namespace"],
                          "resourceVersion": meta["resourceVersion"]}}
    return request("PATCH", _path(body["apiVersion"], body["kind"], meta["namespace"], meta["name"]) + "/status",
                   query={"fieldManager": FIELD_MANAGER, "force": "true"}, body=patch,
                   content_type="application/apply-patch+yaml")

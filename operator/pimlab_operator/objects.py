"""Facts about Kubernetes objects that several kinds read: label selectors, pod readiness,
ownership, and where a Lab's gateway answers. No kind imports another kind; they share these."""

from __future__ import annotations

from api_services.catalog import SERVICE_PORT, service_host


def selector_matches(selector: dict | None, labels: dict | None) -> bool:
    """A LabelSelector's matchLabels/matchExpressions against an object's labels."""
    labels = labels or {}
    selector = selector or {}
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions") or []:
        key, op, values = expression["key"], expression["operator"], expression.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def selector_string(selector: dict | None) -> str:
    """A LabelSelector (matchLabels and matchExpressions) as the `labelSelector` string the list
    API takes, so the apiserver filters; "" (everything) for no selector."""
    selector = selector or {}
    terms = [f"{key}={value}" for key, value in (selector.get("matchLabels") or {}).items()]
    for expression in selector.get("matchExpressions") or []:
        key, op, values = expression["key"], expression["operator"], expression.get("values") or []
        if op in ("In", "NotIn"):
            terms.append(f"{key} {op.lower()} ({','.join(values)})")
        elif op == "Exists":
            terms.append(key)
        elif op == "DoesNotExist":
            terms.append(f"!{key}")
    return ",".join(terms)


def label_selector(labels: dict[str, str]) -> str:
    """Labels as the `labelSelector` string the list API takes."""
    return ",".join(f"{key}={value}" for key, value in labels.items())


def ready_condition(obj: dict) -> dict | None:
    """The object's Ready condition (a pod's, a Shard's), or None while it reports none."""
    return next((c for c in (obj.get("status") or {}).get("conditions") or [] if c.get("type") == "Ready"), None)


def pod_ready(pod: dict) -> bool:
    return (ready_condition(pod) or {}).get("status") == "True"


def owned_by(obj: dict, uid: str) -> bool:
    """Whether `obj` names the object with this uid among its owners."""
    return any(ref.get("uid") == uid for ref in obj["metadata"].get("ownerReferences") or [])


def gateway_url(lab: str, namespace: str) -> str:
    """The in-cluster URL of a Lab's gateway Service."""
    port = "" if SERVICE_PORT == 80 else f":{SERVICE_PORT}"
    return f"http://{service_host(lab, 'gateway', namespace)}{port}"


def dev_issuer_secret(lab: str) -> str:
    """The Secret holding a Lab's development token issuer key (when `spec.auth` is unset)."""
    return f"{lab}-dev-issuer"


#: Where the dev issuer key is mounted in the Lab's pods and the engines that target it.
DEV_ISSUER_DIR = "/etc/pim/dev-issuer"

"""Grafana annotations for chaos runs. Where a Lab of the experiment's namespace names a Grafana
(`spec.observability.grafana`, its token in the Secret `apiTokenSecretRef` names), a real run
marks its start and, when it ends, its whole span with the verdict, so every dashboard shows
when a fault was in. An annotation is advice: a Grafana that cannot be reached never holds up
or fails a run, and the token is never logged."""

from __future__ import annotations

import base64
import datetime as dt
import logging

import httpx

from pimlab_operator import kube
from pimlab_operator.chaos.model import ChaosExperimentSpec, ChaosExperimentStatus
from pimlab_operator.schema import API_VERSION

log = logging.getLogger(__name__)

TIMEOUT_SECONDS = 5.0
ENDED = ("Completed", "Aborted", "Failed")
IN_RUN = ("Running", "Recovering")


def _ms(at: dt.datetime | None) -> int:
    return int((at or dt.datetime.now(dt.timezone.utc)).timestamp() * 1000)


def annotation(body: dict, spec: ChaosExperimentSpec, new: ChaosExperimentStatus) -> dict | None:
    """The annotation (Grafana's POST /api/annotations body) a status change calls for: a run
    that starts injecting, or one that ends after it did; None for anything else (dry runs,
    refusals before injection, a status written again unchanged)."""
    before = ChaosExperimentStatus.model_validate(body.get("status") or {}).phase
    after = new.phase
    if before == after:
        return None
    name, action = body["metadata"]["name"], spec.action
    tags = ["pim-sre.lab/chaos", f"experiment:{name}", f"action:{action}"]
    targets = ", ".join(new.affected_targets or new.planned_targets or []) or "nothing"
    if after == "Running":
        return {"time": _ms(new.started_at), "tags": tags,
                "text": f"chaos {name}: {action} on {targets} ({spec.reference or 'no reference'})"}
    if after in ENDED and before in IN_RUN:
        text = f"chaos {name}: {after}, verdict {new.verdict}: {new.phase_reason or ''}"
        if new.recovery_seconds is not None:
            text += f" (recovered in {new.recovery_seconds} s)"
        return {"time": _ms(new.started_at), "timeEnd": _ms(new.completed_at),
                "tags": [*tags, f"verdict:{new.verdict}"], "text": text[:1024]}
    return None


def target(namespace: str) -> tuple[str, str | None] | None:
    """(Grafana URL, token) of the first Lab by name in `namespace` that names a Grafana."""
    for lab in sorted(kube.list_objects(API_VERSION, "Lab", namespace), key=lambda o: o["metadata"]["name"]):
        grafana = ((lab.get("spec") or {}).get("observability") or {}).get("grafana") or {}
        if not grafana.get("url"):
            continue
        ref = grafana.get("apiTokenSecretRef")
        token = None
        if ref:
            secret = kube.get("v1", "Secret", ref["name"], namespace) or {}
            encoded = (secret.get("data") or {}).get(ref["key"])
            token = base64.b64decode(encoded).decode().strip() if encoded else None
        return grafana["url"], token
    return None


def post(url: str, token: str | None, payload: dict) -> None:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = httpx.post(url.rstrip("/") + "/api/annotations", json=payload, headers=headers,
                          timeout=TIMEOUT_SECONDS)
    response.raise_for_status()


def announce(body: dict, spec: ChaosExperimentSpec, new: ChaosExperimentStatus) -> None:
    """Post the annotation `new` calls for, if any and if a Grafana is named; failures are logged."""
    payload = annotation(body, spec, new)
    if payload is None:
        return
    meta = body["metadata"]
    try:
        found = target(meta["namespace"])
        if found:
            post(found[0], found[1], payload)
    except (httpx.HTTPError, kube.ApiError, ValueError) as error:
        # httpx's messages name the URL and status, never the request's headers
        log.warning("Grafana annotation for %s/%s not posted: %s", meta["namespace"], meta["name"],
                    type(error).__name__ if isinstance(error, ValueError) else error)

"""What a PersonaLoad should have: the engine's config and the Job (or CronJob) that runs it.

A Job's pod template is immutable, so a run's Job is named after a hash of its config and
image: editing the spec starts a new run instead of failing to apply. What a run says is in
`status.py`.
"""

from __future__ import annotations

import hashlib
import json

from pimlab_operator.objects import DEV_ISSUER_DIR, gateway_url
from pimlab_operator.personaload.model import STANDARD_JOURNEYS, FailurePressure, PersonaLoadSpec
from pimlab_operator.render import owned, render
from pimlab_operator.schema import duration_seconds

RUN_LABEL = "pim-sre.lab/personaload"
#: The engine's Prometheus port in its pod.
METRICS_PORT = 9464
#: Seconds a run's Job may last beyond its ramp-up and duration before it is failed.
DEADLINE_SLACK_SECONDS = 600
#: Seconds an engine pod gets beyond its client timeout to write its report when stopped.
REPORT_GRACE_SECONDS = 10


def target_url(body: dict, spec: PersonaLoadSpec) -> str:
    if spec.target.url:
        return spec.target.url
    return gateway_url(spec.target.lab_ref, body["metadata"]["namespace"])


def engine_image(spec: PersonaLoadSpec, lab: dict | None) -> str | None:
    """spec.image, else the target Lab's image; None when neither is known yet."""
    return spec.image or ((lab or {}).get("spec") or {}).get("image")


def config_hash(body: dict, spec: PersonaLoadSpec, image: str | None) -> str:
    text = json.dumps({"config": spec.to_k8s(), "image": image, "url": target_url(body, spec)}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def job_name(body: dict, spec: PersonaLoadSpec, image: str | None) -> str:
    """`<name>-<hash>`, within the 63 characters a Job's pods can label."""
    return f"{body['metadata']['name'][:54]}-{config_hash(body, spec, image)}"


def engine_config(spec: PersonaLoadSpec) -> dict:
    """The engine's config.json: the spec with every default spelled out, so the config says
    exactly what runs (a persona without journeys gets its standard ones)."""
    config = spec.to_k8s()
    for persona in config["personas"]:
        persona.setdefault("journeys", list(STANDARD_JOURNEYS[persona["name"]]))
    return config


def desired_children(body: dict, spec: PersonaLoadSpec, image: str | None,
                     dev_issuer_secret: str | None = None) -> list[dict]:
    """The ConfigMap (the engine's config) always; the Job/CronJob only once an image is
    known. `dev_issuer_secret`: the target Lab's token signing key, mounted so the engine's
    tokens are the ones the Lab trusts."""
    name = body["metadata"]["name"]
    labels = {"app.kubernetes.io/name": "pim-persona-engine", "app.kubernetes.io/instance": name,
              "app.kubernetes.io/part-of": "pim-sre-lab", RUN_LABEL: name}
    children = render("personaload/config.yaml.j2", name=name, labels=labels,
                      config=json.dumps(engine_config(spec), indent=2, sort_keys=True))
    if image:
        profile = spec.profile
        ramp_up = duration_seconds(profile.ramp_up) if profile.ramp_up else 0
        deadline = int(duration_seconds(profile.duration) + ramp_up) + DEADLINE_SLACK_SECONDS
        timeout = (spec.failure_pressure or FailurePressure()).timeout
        children += render("personaload/run.yaml.j2", name=name, labels=labels, image=image,
                           target_url=target_url(body, spec), parallelism=spec.parallelism,
                           schedule=spec.schedule or "", job_name=job_name(body, spec, image),
                           config_hash=config_hash(body, spec, image), deadline_seconds=deadline,
                           metrics_port=METRICS_PORT, dev_issuer_secret=dev_issuer_secret,
                           dev_issuer_dir=DEV_ISSUER_DIR,
                           grace_seconds=int(duration_seconds(timeout)) + REPORT_GRACE_SECONDS)
    return owned(children, body)

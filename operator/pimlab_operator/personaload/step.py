"""PersonaLoad -> engine ConfigMap + Job (one run per spec) or CronJob (scheduled runs)."""

from __future__ import annotations

from pimlab_operator import kube, reconcile
from pimlab_operator.objects import dev_issuer_secret
from pimlab_operator.personaload import desired, status
from pimlab_operator.personaload.model import PersonaLoadSpec
from pimlab_operator.reconcile import ChildKind
from pimlab_operator.schema import API_VERSION

#: A Job of an earlier spec leaves the desired set and is pruned with its pods.
CHILDREN = (ChildKind("v1", "ConfigMap"), ChildKind("batch/v1", "Job"), ChildKind("batch/v1", "CronJob"))


def running(body: dict) -> bool:
    """A run in progress is followed (its pods' results) at the resync period, never backed off."""
    return (body.get("status") or {}).get("phase") in ("Pending", "Running")

def _lab(body: dict, spec: PersonaLoadSpec) -> dict | None:
    ref = spec.target.lab_ref
    return kube.get(API_VERSION, "Lab", ref, body["metadata"]["namespace"]) if ref else None


def _job_of(pod: dict) -> str | None:
    labels = pod["metadata"].get("labels") or {}
    return labels.get("batch.kubernetes.io/job-name") or labels.get("job-name")


def step(body: dict, spec: PersonaLoadSpec) -> None:
    name, namespace = body["metadata"]["name"], body["metadata"]["namespace"]
    lab = _lab(body, spec)
    image = desired.engine_image(spec, lab)
    # Engines aimed at a Lab without spec.auth sign their tokens with the Lab's dev issuer key.
    issuer = dev_issuer_secret(lab["metadata"]["name"]) if lab and not lab["spec"].get("auth") else None
    reconcile.apply_children(body, desired.desired_children(body, spec, image, issuer), prune=CHILDREN)
    selector = f"{desired.RUN_LABEL}={name}"
    jobs = kube.list_objects("batch/v1", "Job", namespace, label_selector=selector)
    pods_by_job: dict[str, list[dict]] = {}
    for pod in kube.list_objects("v1", "Pod", namespace, label_selector=selector):
        pods_by_job.setdefault(_job_of(pod), []).append(pod)
    history = None
    if spec.schedule:
        newest_first = sorted(jobs, key=lambda j: j["metadata"]["creationTimestamp"], reverse=True)
        job = newest_first[0] if newest_first else None
        cronjob = kube.get("batch/v1", "CronJob", name, namespace)
        history = [(j, pods_by_job.get(j["metadata"]["name"], [])) for j in newest_first]
    else:
        current = desired.job_name(body, spec, image) if image else None
        job = next((j for j in jobs if j["metadata"]["name"] == current), None)
        cronjob = None
    pods = pods_by_job.get(job["metadata"]["name"], []) if job else []
    reconcile.write_status(body, *status.personaload_status(body, spec, image, job, cronjob, pods, history))

"""PersonaLoad -> engine ConfigMap + Job (one run per spec) or CronJob (scheduled runs)."""

from __future__ import annotations

from pimlab_operator import kube, personaload, reconcile

KIND = "PersonaLoad"


def _lab(body: dict) -> dict | None:
    ref = body["spec"]["target"].get("labRef")
    return kube.get(f"{kube.GROUP}/{kube.VERSION}", "Lab", ref, body["metadata"]["namespace"]) if ref else None


def step(body: dict) -> None:
    name, namespace = body["metadata"]["name"], body["metadata"]["namespace"]
    image = personaload.engine_image(body, _lab(body))
    reconcile.apply_children(KIND, personaload.desired_children(body, image))
    jobs = kube.list_objects("batch/v1", "Job", namespace, label_selector=f"{personaload.RUN_LABEL}={name}")
    current = personaload.job_name(body, image) if image and not body["spec"].get("schedule") else None
    for stale in personaload.stale_jobs(body, jobs, current):
        kube.delete("batch/v1", "Job", stale, namespace, {"propagationPolicy": "Background"})
    if body["spec"].get("schedule"):
        job = max(jobs, key=lambda j: j["metadata"]["creationTimestamp"], default=None)
        cronjob = kube.get("batch/v1", "CronJob", name, namespace)
    else:
        job = next((j for j in jobs if j["metadata"]["name"] == current), None)
        cronjob = None
    pods = kube.list_objects("v1", "Pod", namespace,
                             label_selector=f"batch.kubernetes.io/job-name={job['metadata']['name']}") if job else []
    fields, wanted = personaload.personaload_status(body, image, job, cronjob, pods)
    reconcile.write_status(body, fields, wanted)


# The run's progress and its summary reach status even without Job events.
reconcile.register(KIND, "personaloads", step, resync_seconds=15, idle_seconds=5)

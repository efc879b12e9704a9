"""What a PersonaLoad should be (engine config + Job or CronJob) and what its last run says.

A Job's pod template is immutable, so a run's Job is named after a hash of its config and
image: editing the spec starts a new run instead of failing to apply. The engine writes its
JSON summary to the pod's termination message; the status copies it after validating it.
"""

from __future__ import annotations

import hashlib
import json

from pydantic import ValidationError

from pimlab_operator.conditions import Condition
from pimlab_operator.objects import gateway_url
from pimlab_operator.personaload.model import LoadSummary, PersonaLoadSpec
from pimlab_operator.render import owned, render
from pimlab_operator.schema import duration_seconds

RUN_LABEL = "pim-sre.lab/personaload"


def target_url(body: dict) -> str:
    target = body["spec"]["target"]
    if target.get("url"):
        return target["url"]
    return gateway_url(target["labRef"], body["metadata"]["namespace"])


def engine_image(body: dict, lab: dict | None) -> str | None:
    """spec.image, else the target Lab's image; None when neither is known yet."""
    return body["spec"].get("image") or ((lab or {}).get("spec") or {}).get("image")


def config_hash(body: dict, spec: PersonaLoadSpec, image: str | None) -> str:
    text = json.dumps({"config": spec.to_k8s(), "image": image, "url": target_url(body)}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def job_name(body: dict, spec: PersonaLoadSpec, image: str | None) -> str:
    """`<name>-<hash>`, within the 63 characters a Job's pods can label."""
    return f"{body['metadata']['name'][:54]}-{config_hash(body, spec, image)}"


def desired_children(body: dict, typed: PersonaLoadSpec, image: str | None) -> list[dict]:
    """The ConfigMap (the engine's config: the spec with every default spelled out) always;
    the Job/CronJob only once an image is known."""
    spec = typed.to_k8s()
    name = body["metadata"]["name"]
    labels = {"app.kubernetes.io/name": "pim-persona-engine", "app.kubernetes.io/instance": name,
              "app.kubernetes.io/part-of": "pim-sre-lab", RUN_LABEL: name}
    children = render("personaload/config.yaml.j2", name=name, labels=labels,
                      config=json.dumps(spec, indent=2, sort_keys=True))
    if image:
        profile = spec["profile"]
        deadline = int(duration_seconds(profile["duration"]) + duration_seconds(profile.get("rampUp") or "0s")) + 600
        children += render("personaload/run.yaml.j2", name=name, labels=labels, image=image,
                           target_url=target_url(body), parallelism=spec["parallelism"],
                           schedule=spec.get("schedule") or "", job_name=job_name(body, typed, image),
                           config_hash=config_hash(body, typed, image), deadline_seconds=deadline)
    return owned(children, body)


def _max(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return max(values) if values else None


def _merge_breakdowns(parts: list[dict]) -> dict:
    """Counts add up; percentiles of several engines cannot be merged exactly, so the maximum
    is kept (an upper bound, the safe side for a threshold)."""
    merged = {"requests": sum(p.get("requests") or 0 for p in parts),
              "errors": sum(p.get("errors") or 0 for p in parts)}
    latency = {q: _max([(p.get("latencyMs") or {}).get(q) for p in parts]) for q in ("p50", "p95", "p99", "max")}
    if any(v is not None for v in latency.values()):
        merged["latencyMs"] = {k: v for k, v in latency.items() if v is not None}
    return merged


def merge_summaries(summaries: list[dict]) -> dict:
    if len(summaries) == 1:
        return summaries[0]
    merged = _merge_breakdowns(summaries)
    merged["dropped"] = sum(s.get("dropped") or 0 for s in summaries)
    merged["achievedRate"] = sum(s.get("achievedRate") or 0 for s in summaries)
    if merged["requests"]:
        merged["errorRatio"] = merged["errors"] / merged["requests"]
    met = [s.get("thresholdsMet") for s in summaries if s.get("thresholdsMet") is not None]
    if met:
        merged["thresholdsMet"] = all(met)
    for key in ("byPersona", "byJourney", "byShard"):
        names = sorted({n for s in summaries for n in (s.get(key) or {})})
        if names:
            merged[key] = {n: _merge_breakdowns([s[key][n] for s in summaries if n in (s.get(key) or {})])
                           for n in names}
    return merged


def summary_from_pods(pods: list[dict]) -> tuple[dict | None, str | None]:
    """The run's summary from the engine pods' termination messages, and a problem if any
    message is not a valid summary (FallbackToLogsOnError may put a log tail there)."""
    found, problems = [], []
    for pod in sorted(pods, key=lambda p: p["metadata"]["name"]):
        for container in (pod.get("status") or {}).get("containerStatuses") or []:
            message = ((container.get("state") or {}).get("terminated") or {}).get("message")
            if not message:
                continue
            try:
                found.append(LoadSummary.model_validate(json.loads(message)).to_k8s())
            except (ValueError, ValidationError) as error:
                first = str(error).splitlines()[0][:160]
                problems.append(f"{pod['metadata']['name']}: termination message is not a summary ({first})")
    summary = LoadSummary.model_validate(merge_summaries(found)).to_k8s() if found else None
    return summary, "; ".join(problems[:3]) or None


def _job_condition(job: dict, kind: str) -> dict | None:
    for condition in (job.get("status") or {}).get("conditions") or []:
        if condition.get("type") == kind and condition.get("status") == "True":
            return condition
    return None


def personaload_status(body: dict, image: str | None, job: dict | None, cronjob: dict | None,
                       pods: list[dict]) -> tuple[dict, list[Condition]]:
    """Phase from the Job (or CronJob), start/end times, and the summary when the run ended."""
    scheduled = bool(body["spec"].get("schedule"))
    status: dict = {}
    summary, problem = None, None
    if job:
        job_status = job.get("status") or {}
        status["jobName"] = job["metadata"]["name"]
        status["startedAt"] = job_status.get("startTime")
        failed, complete = _job_condition(job, "Failed"), _job_condition(job, "Complete")
        summary, problem = summary_from_pods(pods)
        if complete:
            phase, reason, message = "Succeeded", "RunSucceeded", f"run {job['metadata']['name']} completed"
            status["completedAt"] = job_status.get("completionTime") or complete.get("lastTransitionTime")
        elif failed:
            phase, reason = "Failed", "RunFailed"
            message = f"run {job['metadata']['name']} failed: {failed.get('reason')}: {failed.get('message', '')}"
            status["completedAt"] = failed.get("lastTransitionTime")
        elif job_status.get("active") or job_status.get("ready"):
            phase, reason, message = "Running", "Running", f"{job_status.get('active', 0)} engine pods running"
        else:
            phase, reason, message = ("Scheduled" if scheduled else "Pending"), "JobPending", "waiting for engine pods"
    elif image is None:
        phase, reason = "Pending", "ImageUnknown"
        message = f"no spec.image and Lab {body['spec']['target'].get('labRef')!r} not found: cannot start the engine"
    elif scheduled:
        phase, reason, message = "Scheduled", "Scheduled", f"waiting for the schedule {body['spec']['schedule']!r}"
    else:
        phase, reason, message = "Pending", "JobPending", "the run's Job is being created"
    if cronjob and (cronjob.get("status") or {}).get("lastScheduleTime"):
        status["lastScheduleTime"] = cronjob["status"]["lastScheduleTime"]
    if summary:
        status["summary"] = summary
    ready = phase == "Succeeded" or (scheduled and phase in ("Scheduled", "Running"))
    if summary and summary.get("thresholdsMet") is False:
        ready, reason, message = False, "ThresholdsMissed", f"{message}; spec.thresholds did not hold"
    status.update(phase=phase, phaseReason=message)
    conditions = [Condition("Ready", ready, reason, message),
                  Condition("Progressing", phase in ("Pending", "Running"), reason, message)]
    if problem:
        conditions.append(Condition("SummaryValid", False, "TerminationMessageMalformed", problem))
    elif job and (_job_condition(job, "Complete") or _job_condition(job, "Failed")):
        conditions.append(Condition("SummaryValid", summary is not None,
                                    "SummaryCopied" if summary else "NoSummary",
                                    "summary copied from the engine's termination message" if summary
                                    else "the engine pods left no termination message"))
    return {k: v for k, v in status.items() if v is not None}, conditions

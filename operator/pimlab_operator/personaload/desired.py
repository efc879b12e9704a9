"""What a PersonaLoad should be (engine config + Job or CronJob) and what its last run says.

A Job's pod template is immutable, so a run's Job is named after a hash of its config and
image: editing the spec starts a new run instead of failing to apply. Each engine pod writes its
report (counts and HDR histograms, `pimlab_load.report`) to its termination message; the status
merges the reports bucket by bucket and reads percentiles from the sum, never averaging them.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

from pimlab_operator.conditions import Condition
from pimlab_operator.objects import DEV_ISSUER_DIR, gateway_url
from pimlab_operator.personaload.model import STANDARD_JOURNEYS, LoadSummary, PersonaLoadSpec
from pimlab_operator.render import owned, render
from pimlab_operator.schema import duration_seconds
from pimlab_load.report import Recorder, WireError, from_wire, merge, summary

RUN_LABEL = "pim-sre.lab/personaload"
#: The engine's Prometheus port in its pod.
METRICS_PORT = 9464


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


def desired_children(body: dict, typed: PersonaLoadSpec, image: str | None,
                     dev_issuer_secret: str | None = None) -> list[dict]:
    """The ConfigMap (the engine's config: the spec with every default spelled out) always;
    the Job/CronJob only once an image is known. `dev_issuer_secret`: the target Lab's token
    signing key, mounted so the engine's tokens are the ones the Lab trusts."""
    spec = typed.to_k8s()
    for persona in spec["personas"]:  # spelled out: the config says exactly what runs
        persona.setdefault("journeys", list(STANDARD_JOURNEYS[persona["name"]]))
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
                           config_hash=config_hash(body, typed, image), deadline_seconds=deadline,
                           metrics_port=METRICS_PORT, dev_issuer_secret=dev_issuer_secret,
                           dev_issuer_dir=DEV_ISSUER_DIR,
                           grace_seconds=int(duration_seconds((spec.get("failurePressure") or {}).get("timeout", "2s"))) + 10)
    return owned(children, body)


# ------------------------------------------------------------------------------------------
# A run's outcome from its Job and pods (pure)
# ------------------------------------------------------------------------------------------

#: The engine's exit code when its thresholds were missed (its report is still valid).
THRESHOLDS_MISSED = 99
#: Pod waiting reasons that mean the engine will never start without a change.
STUCK_WAITING = frozenset({"ImagePullBackOff", "ErrImagePull", "InvalidImageName", "CreateContainerConfigError",
                           "CreateContainerError", "CrashLoopBackOff"})


@dataclass
class PodFinding:
    pod: str
    index: int | None
    reason: str  # one CamelCase word
    message: str


@dataclass
class RunOutcome:
    """What one run (a Job and its pods) says: phase, why, and the merged summary."""

    phase: str
    reason: str
    message: str
    summary: dict | None = None
    started_at: str | None = None
    completed_at: str | None = None
    pods: dict = field(default_factory=dict)
    problems: list[PodFinding] = field(default_factory=list)  # failed, evicted, unschedulable, stuck
    malformed: list[str] = field(default_factory=list)  # termination messages that are not reports


def _job_condition(job: dict, kind: str) -> dict | None:
    for condition in (job.get("status") or {}).get("conditions") or []:
        if condition.get("type") == kind and condition.get("status") == "True":
            return condition
    return None


def _pod_index(pod: dict) -> int | None:
    meta = pod["metadata"]
    value = (meta.get("annotations") or {}).get("batch.kubernetes.io/job-completion-index") or \
        (meta.get("labels") or {}).get("batch.kubernetes.io/job-completion-index")
    return int(value) if value is not None and str(value).isdigit() else None


def _engine_state(pod: dict) -> dict:
    for container in (pod.get("status") or {}).get("containerStatuses") or []:
        if container.get("name") == "engine":
            return container
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    return statuses[0] if statuses else {}


def pod_finding(pod: dict) -> PodFinding | None:
    """Why an engine pod failed or cannot run, if it did: evicted, killed, unschedulable,
    stuck pulling its image, or the engine exited non-zero (other than thresholds missed)."""
    name, status = pod["metadata"]["name"], pod.get("status") or {}
    index = _pod_index(pod)
    conditions = {c.get("type"): c for c in status.get("conditions") or []}
    if status.get("reason") == "Evicted" or (conditions.get("DisruptionTarget") or {}).get("status") == "True":
        detail = status.get("message") or (conditions.get("DisruptionTarget") or {}).get("message") or "evicted"
        return PodFinding(name, index, "PodEvicted", f"{name}: {detail}")
    container = _engine_state(pod)
    state = container.get("state") or {}
    terminated = state.get("terminated")
    if terminated and terminated.get("exitCode") not in (0, THRESHOLDS_MISSED):
        why = terminated.get("reason") or "Error"
        return PodFinding(name, index, "EngineOOMKilled" if why == "OOMKilled" else "EngineFailed",
                          f"{name}: engine exited {terminated.get('exitCode')} ({why})")
    if status.get("phase") == "Failed" and not terminated:
        return PodFinding(name, index, "PodFailed", f"{name}: {status.get('reason') or 'failed'}: {status.get('message', '')}")
    waiting = (state.get("waiting") or {})
    if waiting.get("reason") in STUCK_WAITING:
        return PodFinding(name, index, "EngineNotStarting", f"{name}: {waiting['reason']}: {waiting.get('message', '')}"[:300])
    scheduled = conditions.get("PodScheduled")
    if status.get("phase") == "Pending" and scheduled and scheduled.get("status") == "False":
        return PodFinding(name, index, "PodUnschedulable",
                          f"{name}: {scheduled.get('reason', 'Unschedulable')}: {scheduled.get('message', '')}"[:300])
    return None


def _latest_per_index(pods: list[dict]) -> list[dict]:
    """A replaced pod leaves the newest of its index as the one that counts."""
    latest: dict = {}
    for pod in sorted(pods, key=lambda p: (p["metadata"].get("creationTimestamp") or "", p["metadata"]["name"])):
        index = _pod_index(pod)
        latest[index if index is not None else pod["metadata"]["name"]] = pod
    return list(latest.values())


def reports_from_pods(pods: list[dict]) -> tuple[dict[int, Recorder], list[str]]:
    """Each pod's engine report (its termination message), by completion index, and the
    messages that are not reports (FallbackToLogsOnError may put a log tail there)."""
    found, malformed = {}, []
    for pod in pods:
        terminated = (_engine_state(pod).get("state") or {}).get("terminated") or {}
        message = terminated.get("message")
        if not message:
            continue
        try:
            rec, (index, _of), approx = from_wire(message)
        except WireError as error:
            malformed.append(f"{pod['metadata']['name']}: termination message is not an engine report ({error})"[:300])
            continue
        rec.approx = approx
        found[_pod_index(pod) if _pod_index(pod) is not None else index] = rec
    return found, malformed


def merged_summary(reports: list[Recorder], thresholds: dict | None) -> dict:
    """The pods' reports merged bucket by bucket, summarised once; validated by the model."""
    merged = merge(reports)
    result = summary(merged, thresholds)
    approx = sorted({d for rec in reports for d in getattr(rec, "approx", [])})
    if approx:
        result["approximate"] = approx
    return LoadSummary.model_validate(result).to_k8s()


def run_outcome(job: dict, pods: list[dict], thresholds: dict | None) -> RunOutcome:
    """A run's phase and reason, never Succeeded without every pod's results:

    - a pod that failed, was evicted, cannot schedule or cannot start: its reason (Degraded
      while the Job runs, Failed once it ended);
    - a finished Job with pods that left no report: NoResults (none) or ResultsMissing (some);
    - reports whose thresholds did not hold: ThresholdsMissed;
    - a Job that failed otherwise (its deadline): JobFailed with the Job's reason."""
    job_status = job.get("status") or {}
    name = job["metadata"]["name"]
    expected = int((job.get("spec") or {}).get("completions") or 1)
    pods = _latest_per_index(pods)
    problems = [f for f in (pod_finding(p) for p in pods) if f]
    reports, malformed = reports_from_pods(pods)
    outcome = RunOutcome("Pending", "JobPending", "waiting for engine pods", started_at=job_status.get("startTime"),
                         problems=problems, malformed=malformed)
    outcome.pods = {"expected": expected, "active": int(job_status.get("active") or 0),
                    "succeeded": int(job_status.get("succeeded") or 0), "failed": int(job_status.get("failed") or 0),
                    "reported": len(reports)}
    if reports:
        outcome.summary = merged_summary(list(reports.values()), thresholds)
    complete, failed = _job_condition(job, "Complete"), _job_condition(job, "Failed")
    if not (complete or failed):
        running = any((p.get("status") or {}).get("phase") in ("Running", "Succeeded") for p in pods) \
            or job_status.get("ready")
        outcome.phase = "Running" if running else "Pending"
        outcome.reason = "Running" if running else "JobPending"
        outcome.message = f"{outcome.pods['active']} of {expected} engine pods active" if running else outcome.message
        if problems:
            outcome.reason, outcome.message = problems[0].reason, "; ".join(f.message for f in problems[:3])
        return outcome
    outcome.completed_at = job_status.get("completionTime") or (complete or failed).get("lastTransitionTime")
    missing = sorted(set(range(expected)) - set(reports))
    if problems:
        outcome.phase, outcome.reason = "Failed", problems[0].reason
        outcome.message = f"run {name}: " + "; ".join(f.message for f in problems[:3])
    elif missing:
        outcome.phase = "Failed"
        outcome.reason = "NoResults" if not reports else "ResultsMissing"
        outcome.message = (f"run {name} ended but engine pods {missing} left no report in their termination message"
                           + (f" ({malformed[0]})" if malformed else "")
                           + ("" if reports else ": nothing was measured"))
    elif (outcome.summary or {}).get("thresholdsMet") is False:
        missed = [v["name"] for v in outcome.summary.get("thresholds") or [] if not v["met"]]
        outcome.phase, outcome.reason = "Failed", "ThresholdsMissed"
        outcome.message = f"run {name}: thresholds missed: {', '.join(missed)}"
    elif failed:
        outcome.phase, outcome.reason = "Failed", "JobFailed"
        outcome.message = f"run {name} failed: {failed.get('reason')}: {failed.get('message', '')}"
    else:
        outcome.phase, outcome.reason = "Succeeded", "RunSucceeded"
        outcome.message = (f"run {name} completed: {outcome.summary['requests']} requests from {len(reports)} "
                           f"{'pod' if len(reports) == 1 else 'pods'}")
    return outcome


def run_record(job: dict, outcome: RunOutcome) -> dict:
    summary_ = outcome.summary or {}
    latency = summary_.get("latencyMs") or {}
    record = {"jobName": job["metadata"]["name"], "phase": outcome.phase, "reason": outcome.reason,
              "startedAt": outcome.started_at, "completedAt": outcome.completed_at,
              "requests": summary_.get("requests"), "errorRatio": summary_.get("errorRatio"),
              "p95Ms": latency.get("p95"), "p99Ms": latency.get("p99"), "thresholdsMet": summary_.get("thresholdsMet")}
    return {k: v for k, v in record.items() if v is not None}


def personaload_status(body: dict, image: str | None, job: dict | None, cronjob: dict | None,
                       pods: list[dict], history: list[tuple[dict, list[dict]]] | None = None
                       ) -> tuple[dict, list[Condition]]:
    """Phase, times, pods and the merged summary of the current run; for a CronJob also the
    last finished runs (`history`: each Job with its pods, newest first)."""
    scheduled = bool(body["spec"].get("schedule"))
    thresholds = body["spec"].get("thresholds")
    status: dict = {}
    outcome = None
    if job:
        outcome = run_outcome(job, pods, thresholds)
        status.update(jobName=job["metadata"]["name"], startedAt=outcome.started_at,
                      completedAt=outcome.completed_at, pods=outcome.pods, summary=outcome.summary)
        phase, reason, message = outcome.phase, outcome.reason, outcome.message
        if scheduled and phase in ("Succeeded", "Failed"):
            message = f"{message}; next run on {body['spec']['schedule']!r}"
    elif image is None:
        phase, reason = "Pending", "ImageUnknown"
        message = f"no spec.image and Lab {body['spec']['target'].get('labRef')!r} not found: cannot start the engine"
    elif scheduled:
        phase, reason, message = "Scheduled", "Scheduled", f"waiting for the schedule {body['spec']['schedule']!r}"
    else:
        phase, reason, message = "Pending", "JobPending", "the run's Job is being created"
    if cronjob and (cronjob.get("status") or {}).get("lastScheduleTime"):
        status["lastScheduleTime"] = cronjob["status"]["lastScheduleTime"]
    if scheduled and history:
        records = []
        for past_job, past_pods in history:
            past = run_outcome(past_job, past_pods, thresholds)
            if past.phase in ("Succeeded", "Failed"):
                records.append(run_record(past_job, past))
        if records:
            status["recentRuns"] = records[:5]
    status.update(phase=phase, phaseReason=message[:1024])
    ready = phase == "Succeeded" or (scheduled and phase in ("Scheduled", "Running", "Pending") and not job)
    if scheduled and job and phase in ("Running", "Pending"):
        ready = not (outcome and outcome.problems)
    conditions = [Condition("Ready", ready, reason, message[:1024]),
                  Condition("Progressing", phase in ("Pending", "Running"), reason, message[:1024])]
    degraded = None
    if outcome and outcome.problems:
        degraded = (outcome.problems[0].reason, "; ".join(f.message for f in outcome.problems[:3]))
    elif outcome and (outcome.summary or {}).get("saturated"):
        degraded = ("EngineSaturated", f"the engine was the bottleneck: {outcome.summary.get('saturationReason')};"
                                       " raise maxInFlight or parallelism")
    conditions.append(Condition("Degraded", degraded is not None, degraded[0] if degraded else "AsExpected",
                                (degraded[1] if degraded else "no engine pod failed")[:1024]))
    if outcome and outcome.malformed:
        conditions.append(Condition("SummaryValid", False, "TerminationMessageMalformed", "; ".join(outcome.malformed[:3])))
    elif outcome and phase in ("Succeeded", "Failed"):
        conditions.append(Condition("SummaryValid", outcome.summary is not None,
                                    "SummaryMerged" if outcome.summary else "NoSummary",
                                    f"merged from {outcome.pods['reported']} of {outcome.pods['expected']} engine pods"
                                    if outcome.summary else "the engine pods left no report"))
    return {k: v for k, v in status.items() if v is not None}, conditions

"""What a PersonaLoad's runs say, from its Jobs, their pods and its CronJob (pure).

Each engine pod writes its report (counts and HDR histograms, `pimlab_load.report`) to its
termination message; the status merges the reports bucket by bucket and reads percentiles from
the sum, never averaging them; the ledgers, write outages and slowest requests merge beside them.
A run is never Succeeded without every pod's results.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pimlab_load.ledger import status_fields
from pimlab_load.report import Recorder, WireError, from_wire, merge, summary
from pimlab_operator.conditions import Condition
from pimlab_operator.personaload.model import (
    LoadSummary,
    PersonaLoadSpec,
    PersonaLoadStatus,
    PodCounts,
    RunRecord,
    Thresholds,
)

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
    summary: LoadSummary | None = None
    ledger: dict = field(default_factory=dict)  # status.ledger, writeOutages and slowest (camelCase)
    started_at: str | None = None
    completed_at: str | None = None
    pods: PodCounts = field(default_factory=PodCounts)
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


def merged_summary(reports: list[Recorder], thresholds: Thresholds | None) -> tuple[LoadSummary, dict]:
    """The pods' reports merged bucket by bucket, summarised once; and the merged ledger,
    write outages and slowest request as status fields. The engine's summary takes the
    thresholds as its config spells them (camelCase), as the engine itself does."""
    merged = merge(reports)
    result = summary(merged, thresholds.to_k8s() if thresholds else None)
    approx = sorted({d for rec in reports for d in getattr(rec, "approx", [])})
    if approx:
        result["approximate"] = approx
    return LoadSummary.model_validate(result), status_fields(merged.ledger, merged.outages, merged.slowest)


def run_outcome(job: dict, pods: list[dict], thresholds: Thresholds | None) -> RunOutcome:
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
    outcome.pods = PodCounts(expected=expected, active=int(job_status.get("active") or 0),
                             succeeded=int(job_status.get("succeeded") or 0),
                             failed=int(job_status.get("failed") or 0), reported=len(reports))
    if reports:
        outcome.summary, outcome.ledger = merged_summary(list(reports.values()), thresholds)
    complete, failed = _job_condition(job, "Complete"), _job_condition(job, "Failed")
    if not (complete or failed):
        running = any((p.get("status") or {}).get("phase") in ("Running", "Succeeded") for p in pods) \
            or job_status.get("ready")
        outcome.phase = "Running" if running else "Pending"
        outcome.reason = "Running" if running else "JobPending"
        outcome.message = f"{outcome.pods.active} of {expected} engine pods active" if running else outcome.message
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
    elif outcome.summary and outcome.summary.thresholds_met is False:
        missed = [v.name for v in outcome.summary.thresholds or [] if not v.met]
        outcome.phase, outcome.reason = "Failed", "ThresholdsMissed"
        outcome.message = f"run {name}: thresholds missed: {', '.join(missed)}"
    elif failed:
        outcome.phase, outcome.reason = "Failed", "JobFailed"
        outcome.message = f"run {name} failed: {failed.get('reason')}: {failed.get('message', '')}"
    else:
        outcome.phase, outcome.reason = "Succeeded", "RunSucceeded"
        outcome.message = (f"run {name} completed: {outcome.summary.requests} requests from {len(reports)} "
                           f"{'pod' if len(reports) == 1 else 'pods'}")
    return outcome


def run_record(job: dict, outcome: RunOutcome) -> RunRecord:
    result = outcome.summary or LoadSummary()
    latency = result.latency_ms
    return RunRecord(job_name=job["metadata"]["name"], phase=outcome.phase, reason=outcome.reason,
                     started_at=outcome.started_at, completed_at=outcome.completed_at,
                     requests=result.requests, error_ratio=result.error_ratio,
                     p95_ms=latency.p95 if latency else None, p99_ms=latency.p99 if latency else None,
                     thresholds_met=result.thresholds_met)


def personaload_status(body: dict, spec: PersonaLoadSpec, image: str | None, job: dict | None,
                       cronjob: dict | None, pods: list[dict],
                       history: list[tuple[dict, list[dict]]] | None = None
                       ) -> tuple[PersonaLoadStatus, list[Condition]]:
    """Phase, times, pods and the merged summary of the current run (`job` and its `pods`);
    for a CronJob also the last finished runs (`history`: each Job with its pods, newest
    first)."""
    scheduled = bool(spec.schedule)
    run: dict = {}  # the current run's fields
    outcome = None
    if job:
        outcome = run_outcome(job, pods, spec.thresholds)
        run = {"job_name": job["metadata"]["name"], "started_at": outcome.started_at,
               "completed_at": outcome.completed_at, "pods": outcome.pods, "summary": outcome.summary,
               **outcome.ledger}
        phase, reason, message = outcome.phase, outcome.reason, outcome.message
        if scheduled and phase in ("Succeeded", "Failed"):
            message = f"{message}; next run on {spec.schedule!r}"
    elif image is None:
        phase, reason = "Pending", "ImageUnknown"
        message = f"no spec.image and Lab {spec.target.lab_ref!r} not found: cannot start the engine"
    elif scheduled:
        phase, reason, message = "Scheduled", "Scheduled", f"waiting for the schedule {spec.schedule!r}"
    else:
        phase, reason, message = "Pending", "JobPending", "the run's Job is being created"
    records = []
    for past_job, past_pods in (history or []) if scheduled else []:
        past = run_outcome(past_job, past_pods, spec.thresholds)
        if past.phase in ("Succeeded", "Failed"):
            records.append(run_record(past_job, past))
    status = PersonaLoadStatus(**run, phase=phase, phase_reason=message[:1024],
                               last_schedule_time=((cronjob or {}).get("status") or {}).get("lastScheduleTime"),
                               recent_runs=records[:5] or None)
    ready = phase == "Succeeded" or (scheduled and phase in ("Scheduled", "Running", "Pending") and not job)
    if scheduled and job and phase in ("Running", "Pending"):
        ready = not (outcome and outcome.problems)
    conditions = [Condition("Ready", ready, reason, message[:1024]),
                  Condition("Progressing", phase in ("Pending", "Running"), reason, message[:1024])]
    degraded = None
    if outcome and outcome.problems:
        degraded = (outcome.problems[0].reason, "; ".join(f.message for f in outcome.problems[:3]))
    elif outcome and outcome.summary and outcome.summary.saturated:
        degraded = ("EngineSaturated", f"the engine was the bottleneck: {outcome.summary.saturation_reason};"
                                       " raise maxInFlight or parallelism")
    conditions.append(Condition("Degraded", degraded is not None, degraded[0] if degraded else "AsExpected",
                                (degraded[1] if degraded else "no engine pod failed")[:1024]))
    if outcome and outcome.malformed:
        conditions.append(Condition("SummaryValid", False, "TerminationMessageMalformed", "; ".join(outcome.malformed[:3])))
    elif outcome and phase in ("Succeeded", "Failed"):
        conditions.append(Condition("SummaryValid", outcome.summary is not None,
                                    "SummaryMerged" if outcome.summary else "NoSummary",
                                    f"merged from {outcome.pods.reported} of {outcome.pods.expected} engine pods"
                                    if outcome.summary else "the engine pods left no report"))
    return status, conditions

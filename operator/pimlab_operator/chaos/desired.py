"""A ChaosExperiment's plan and progress, computed purely from its spec, its status and pods.

A run is a small state machine kept in status, so it survives operator restarts:
(new) -> DryRun | Aborted (governance refused it) | Running -> Recovering ->
Completed, or Aborted (kill switch, abortIf, replaced) from Running/Recovering. A scheduled
experiment waits in Scheduled between runs. The intention (phase Running) is written before
anything is deleted or applied, and a run found in Running after a restart is never injected
again. What a fault leaves behind (Chaos Mesh objects, a switchover request on a Shard) is held
by a finalizer until it is cleaned up (`needs_cleanup`).
"""

from __future__ import annotations

import datetime as dt
import math
import random
from dataclasses import dataclass, field

from pimlab_operator.chaos.model import ChaosExperimentSpec
from pimlab_operator.conditions import Condition, now
from pimlab_operator.objects import pod_ready, selector_matches
from pimlab_operator.render import owned, render
from pimlab_operator.schema import duration_seconds

CHAOS_MESH = {"networkDelay": "NetworkChaos", "networkLoss": "NetworkChaos",
              "networkPartition": "NetworkChaos", "cpuStress": "StressChaos"}
CHAOS_MESH_VERSION = "chaos-mesh.org/v1alpha1"
TERMINAL = ("DryRun", "Completed", "Aborted", "Failed")
ACTIVE = ("Running", "Recovering")
#: Held on an experiment while it has something in the cluster to remove.
FINALIZER = "pim-sre.lab/chaos-cleanup"
#: On a Shard: which experiment asked it for a switchover (so cleanup removes only its own).
REQUESTED_BY_ANNOTATION = "pim-sre.lab/switchover-requested-by"


@dataclass
class Plan:
    """Pods the run would hit, out of how many matched, or why it must not run."""

    targets: list[str]
    matched: int
    refusal: tuple[str, str] | None = None  # (reason, message)


@dataclass
class Step:
    """What the handler must write (first) and then do."""

    status: dict
    conditions: list[Condition]
    action: str | None = None  # "deletePods" | "killContainers" | "requestSwitchover" | "applyChaosMesh"
    children: list[dict] = field(default_factory=list)


def _alive(pods: list[dict]) -> list[dict]:
    return [p for p in pods if not p["metadata"].get("deletionTimestamp")
            and (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed")]


def target_namespace(body: dict) -> str:
    selector = body["spec"]["target"].get("selector") or {}
    return selector.get("namespace") or body["metadata"]["namespace"]


def candidates(body: dict, pods: list[dict], shard: dict | None) -> tuple[list[str], int]:
    """(pods that may be hit, pods matched): a shard's primary out of its pods, or the pods
    the selector matches."""
    target = body["spec"]["target"]
    if target.get("shardRef"):
        name = target["shardRef"]
        own = [p for p in _alive(pods) if p["metadata"]["name"].rsplit("-", 1)[0] == name]
        primary = ((shard or {}).get("status") or {}).get("currentPrimary") or f"{name}-0"
        return ([primary] if any(p["metadata"]["name"] == primary for p in own) else []), len(own)
    matched = sorted(p["metadata"]["name"] for p in _alive(pods)
                     if selector_matches(target["selector"], p["metadata"].get("labels")))
    return matched, len(matched)


def plan(body: dict, spec: ChaosExperimentSpec, pods: list[dict], shard: dict | None) -> Plan:
    """Choose targets by mode/value (seeded by the object's uid, so a re-plan picks the same
    pods) and refuse when they exceed the blast radius."""
    pool, matched = candidates(body, pods, shard)
    if not pool:
        return Plan([], matched, ("NoTargets", "no running pod matches the target"))
    mode, value = spec.target.mode, spec.target.value
    count = {"one": 1, "fixed": value, "all": len(pool)}.get(mode) or math.ceil(len(pool) * (value or 0) / 100)
    count = min(max(count, 1), len(pool))
    targets = sorted(random.Random(body["metadata"].get("uid", "")).sample(pool, count))
    limit = spec.blast_radius
    if count > limit.max_pods or count * 100 > limit.max_percent * max(matched, 1):
        return Plan(targets, matched, ("BlastRadiusExceeded",
                    f"plan hits {count} of {matched} matching pods ({count * 100 // max(matched, 1)}%), "
                    f"blast radius allows {limit.max_pods} pods and {limit.max_percent}%"))
    return Plan(targets, matched)


def count_of(count: int, what: str = "pods") -> str:
    """`1 pod`, `2 pods`, `1 replacement pod`: counts in status messages read as English."""
    return f"{count} {what[:-1] if count == 1 and what.endswith('s') else what}"


def event(name: str, detail: str, at: str) -> dict:
    """One timeline entry."""
    return {"time": at, "event": name, "detail": detail[:1024]}


def parse_time(stamp: str) -> dt.datetime:
    return dt.datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def chaos_mesh_children(body: dict, typed: ChaosExperimentSpec, targets: list[str]) -> list[dict]:
    spec = typed.to_k8s()
    name = body["metadata"]["name"]
    labels = {"app.kubernetes.io/name": "pim-chaos", "app.kubernetes.io/instance": name,
              "app.kubernetes.io/part-of": "pim-sre-lab"}
    children = render("chaos/chaos-mesh.yaml.j2", name=name, labels=labels, action=spec["action"],
                      namespace=target_namespace(body), targets=targets, duration=spec["duration"],
                      parameters=spec.get("parameters") or {})
    return owned(children, body)


def _conditions(phase: str, reason: str, message: str) -> list[Condition]:
    ready = phase in ("DryRun", "Completed", "Scheduled") and reason not in ("RecoveryTimedOut",)
    return [Condition("Ready", ready, reason, message),
            Condition("Progressing", phase in ("Running", "Recovering"), reason, message),
            Condition("Degraded", phase in ("Failed", "Aborted") or reason == "RecoveryTimedOut", reason, message)]


def needs_cleanup(spec: ChaosExperimentSpec) -> bool:
    """Whether a run of this action leaves something to remove (so it holds the finalizer)."""
    return spec.action in CHAOS_MESH or (spec.action == "sqlFailover" and _failover_mode(spec) == "switchover")


def _failover_mode(spec: ChaosExperimentSpec) -> str:
    return (spec.parameters.failover_mode if spec.parameters else None) or "switchover"


def switchover_target(shard: dict | None, primary: str) -> str | None:
    """The secondary a switchover promotes: a Ready, streaming one, synchronous first, then the
    least lag (ties by name)."""
    replicas = ((shard or {}).get("status") or {}).get("replicas") or []
    candidates = [r for r in replicas if r.get("pod") != primary and r.get("role") == "secondary"
                  and r.get("ready") and r.get("streaming") is not False]
    candidates.sort(key=lambda r: (not r.get("synchronousCommit"), r.get("lagBytes") or 0, r["pod"]))
    return candidates[0]["pod"] if candidates else None


def start(body: dict, spec: ChaosExperimentSpec, the_plan: Plan, chaos_mesh_installed: bool,
          at: str | None = None, refusal: tuple[str, str] | None = None, shard: dict | None = None,
          slo_checked: str | None = None, carry: dict | None = None) -> Step:
    """The first step of a new run (new object, new generation, or a scheduled run that is due).

    `refusal` is governance's verdict (namespace, kill switch, SLO already burning) and wins
    over the plan's own (blast radius, no targets); `carry` keeps the schedule's fields."""
    at = at or now()
    targets = the_plan.targets
    base = {**(carry or {}), "plannedTargets": targets, "startedAt": at,
            "timeline": [event("Planned", f"{spec.action} on {', '.join(targets) or 'nothing'} "
                                f"({len(targets)} of {the_plan.matched} matching pods)", at)]}

    def finish(phase: str, reason: str, message: str, verdict: str = "Inconclusive", **extra) -> Step:
        status = {**base, **extra, "phase": phase, "phaseReason": message, "verdict": verdict}
        if phase in TERMINAL:
            status["completedAt"] = at
        return Step(status, _conditions(phase, reason, message))

    refused = refusal or the_plan.refusal
    if refused:
        reason, message = refused
        base["timeline"].append(event("Aborted", message, at))
        return finish("Aborted", reason, message, abortReason=message)
    limit = spec.blast_radius
    base["timeline"].append(event("Validated", f"namespace {target_namespace(body)} opted in, kill switch off, "
                                   f"{len(targets)} of {the_plan.matched} pods within the blast radius "
                                   f"({count_of(limit.max_pods)}, {limit.max_percent}%)", at))
    if slo_checked:
        base["timeline"].append(event("SLOChecked", slo_checked, at))
    if spec.dry_run:
        return finish("DryRun", "DryRun", f"dry run: would {spec.action} {', '.join(targets)}; nothing injected")
    if spec.action in CHAOS_MESH and not chaos_mesh_installed:
        message = f"{spec.action} needs Chaos Mesh's {CHAOS_MESH[spec.action]} CRD, which is not installed"
        return finish("Failed", "ChaosMeshNotInstalled", message)
    extra: dict = {}
    if spec.action == "sqlFailover" and _failover_mode(spec) == "switchover":
        wanted = (spec.parameters.switchover_to if spec.parameters else None) or switchover_target(shard, targets[0])
        if not wanted or wanted == targets[0]:
            return finish("Failed", "NoSwitchoverTarget",
                          f"no streaming secondary of {body['spec']['target']['shardRef']} to switch over to "
                          f"(primary {targets[0]})")
        extra["affectedTargets"] = [targets[0], wanted]
    base["timeline"].append(event("Injecting", f"about to {spec.action} {', '.join(targets)}", at))
    step = finish("Running", "Injecting", f"injecting {spec.action} into {count_of(len(targets))}", **extra)
    if spec.action == "sqlFailover":
        step.action = "requestSwitchover" if _failover_mode(spec) == "switchover" else "deletePods"
    elif spec.action == "podKill":
        step.action = "deletePods"
    elif spec.action == "containerKill":
        step.action = "killContainers"
    else:
        step.action, step.children = "applyChaosMesh", chaos_mesh_children(body, spec, targets)
        step.status["generatedObjects"] = [
            {"apiVersion": c["apiVersion"], "kind": c["kind"], "name": c["metadata"]["name"],
             "namespace": c["metadata"]["namespace"]} for c in step.children]
    return step


def abort(status: dict, reason: str, message: str, at: str | None = None, phase: str = "Aborted") -> Step:
    """Stop a run where it stands: Aborted (or Failed), verdict Failed; the step then cleans up."""
    at = at or now()
    fields = {**status, "phase": phase, "phaseReason": message, "verdict": "Failed", "abortReason": message,
              "completedAt": at, "timeline": [*status.get("timeline", []), event("Aborted", message, at)]}
    return Step(fields, _conditions(phase, reason, message))


def kept_conditions(status: dict) -> list[Condition]:
    """The conditions as they are, for a write that changes no outcome."""
    return [Condition(c["type"], c["status"] == "True", c["reason"], c.get("message") or "")
            for c in status.get("conditions") or []]


def cleaned(body: dict, detail: str, at: str | None = None) -> Step:
    """Record the cleanup of a finished run (its conditions stay what they were)."""
    status = run_fields(body.get("status") or {})
    fields = {**status, "timeline": [*status.get("timeline", []), event("CleanedUp", detail, at or now())][-100:]}
    return Step(fields, kept_conditions(body.get("status") or {}))


def injected(status: dict, detail: str, at: str | None = None, affected: list[str] | None = None) -> Step:
    """After the action (or on finding a Running run after a restart: not repeated)."""
    at = at or now()
    fields = {**status, "phase": "Recovering", "phaseReason": detail,
              "affectedTargets": affected if affected is not None else status.get("affectedTargets", []),
              "timeline": [*status.get("timeline", []), event("Injected", detail, at)]}
    return Step(fields, _conditions("Recovering", "Injected", detail))


def _injecting_time(status: dict) -> dt.datetime:
    stamp = next((e["time"] for e in status.get("timeline", []) if e["event"] == "Injecting"),
                 status.get("startedAt"))
    return parse_time(stamp)


def _ready_since(pod: dict) -> dt.datetime | None:
    """When the pod last became Ready, if it is Ready."""
    for condition in (pod.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "Ready" and condition.get("status") == "True":
            stamp = condition.get("lastTransitionTime")
            return parse_time(stamp) if stamp else None
    return None


def _killed_at(pod: dict) -> dt.datetime | None:
    """When a container of the pod last died (its lastState.terminated.finishedAt)."""
    stamps = [parse_time(s["lastState"]["terminated"]["finishedAt"])
              for s in (pod.get("status") or {}).get("containerStatuses") or []
              if ((s.get("lastState") or {}).get("terminated") or {}).get("finishedAt")]
    return max(stamps) if stamps else None


def _recovered(status: dict, detail: str, seconds: float, at: str, name: str = "TargetRecovered") -> Step:
    fields = {**status, "phase": "Completed", "phaseReason": detail, "verdict": "Passed",
              "recoverySeconds": round(seconds, 3), "completedAt": at,
              "timeline": [*status.get("timeline", []), event(name, detail, at)]}
    return Step(fields, _conditions("Completed", "Recovered", detail))


def _pod_kill_progress(body: dict, status: dict, pods: list[dict], since: dt.datetime,
                       at: dt.datetime) -> tuple[float | None, str]:
    """(seconds until every killed pod had a Ready replacement, or None; what we wait for)."""
    planned = status.get("plannedTargets", [])
    target = body["spec"]["target"]
    pool = [p for p in _alive(pods) if p["metadata"]["name"] in planned
            or (target.get("selector") and selector_matches(target["selector"], p["metadata"].get("labels")))
            or (target.get("shardRef") and p["metadata"]["name"].rsplit("-", 1)[0] == target["shardRef"])]
    # a StatefulSet's replacement keeps the name: a pod is new when it was created after the kill
    originals = [p for p in pool if p["metadata"]["name"] in planned and parse_time(p["metadata"]["creationTimestamp"]) < since]
    replacements = [p for p in pool if parse_time(p["metadata"]["creationTimestamp"]) >= since and pod_ready(p)]
    if not originals and len(replacements) >= len(planned):
        ready = [_ready_since(p) or at for p in replacements]  # no transition time: seen Ready now
        return max([0.0, *((r - since).total_seconds() for r in ready)]), ""
    return None, f"waiting for replacements: {len(replacements)}/{len(planned)} Ready"


def _container_kill_progress(status: dict, pods: list[dict], since: dt.datetime) -> tuple[float | None, str]:
    """(seconds until every killed container's pod was Ready again, or None; what we wait for)."""
    by_name = {p["metadata"]["name"]: p for p in pods}
    affected = status.get("affectedTargets") or status.get("plannedTargets", [])
    times = []
    for name in affected:
        pod = by_name.get(name)
        killed, ready = (_killed_at(pod), _ready_since(pod)) if pod else (None, None)
        if killed is None or killed < since - dt.timedelta(seconds=1) or ready is None or ready < killed:
            return None, f"waiting for {name}: container restarted and Ready again"
        times.append((ready - since).total_seconds())
    return max([0.0, *times]), ""


def failover_record(status: dict, shard: dict | None) -> dict | None:
    """The Shard's record of the failover this run caused: completed, away from the planned
    primary, started after the injection."""
    last = ((shard or {}).get("status") or {}).get("lastFailover") or {}
    old_primary = (status.get("plannedTargets") or [None])[0]
    if last.get("completedAt") and last.get("from") == old_primary and \
            parse_time(last["startedAt"]) >= _injecting_time(status) - dt.timedelta(seconds=2):
        return last
    return None


def _failover_progress(status: dict, shard: dict | None, since: dt.datetime,
                       write_at: dt.datetime | None) -> tuple[float | None, str, dict | None]:
    """(seconds until the `-primary` Service took a write, or None; waiting; the Shard's record)."""
    last = failover_record(status, shard)
    if not last:
        old_primary = (status.get("plannedTargets") or [None])[0]
        return None, f"waiting for the Shard to fail over away from {old_primary}", None
    if write_at is None:
        return None, f"failed over to {last['to']}; waiting for a write through the -primary Service", last
    return max(0.0, (write_at - since).total_seconds()), "", last


def recover(body: dict, spec: ChaosExperimentSpec, status: dict, pods: list[dict],
            at: str | None = None, shard: dict | None = None, write_at: dt.datetime | None = None) -> Step:
    """Recovering -> Completed when the target is healthy again, timed from the injection:
    podKill, a Ready replacement for every killed pod; containerKill, each killed container
    restarted and its pod Ready; sqlFailover, the Shard recorded the failover and its
    `-primary` Service accepted a write (`write_at`); Chaos Mesh faults, their duration is
    over. Times out (verdict Failed) after the duration."""
    at = at or now()
    since = _injecting_time(status)
    elapsed = (parse_time(at) - since).total_seconds()
    timeline = list(status.get("timeline", []))
    if spec.action in CHAOS_MESH:
        if elapsed >= duration_seconds(spec.duration):
            detail = f"fault ended after {spec.duration}"
            fields = {**status, "phase": "Completed", "phaseReason": detail, "verdict": "Passed",
                      "completedAt": at, "timeline": [*timeline, event("Completed", detail, at)]}
            return Step(fields, _conditions("Completed", "FaultEnded", detail))
        return Step({**status, "phaseReason": f"fault active for {elapsed:.0f}s of {spec.duration}"},
                    _conditions("Recovering", "FaultActive", f"fault active for {elapsed:.0f}s of {spec.duration}"))
    if spec.action == "sqlFailover":
        seconds, waiting, record = _failover_progress(status, shard, since, write_at)
        if record and not any(e["event"] == "FailoverRecorded" for e in timeline):
            timeline.append(event("FailoverRecorded", f"Shard {body['spec']['target']['shardRef']}: {record['from']} -> "
                                   f"{record['to']} ({record.get('reason')}) in {record.get('durationSeconds')}s, "
                                   f"writes out for {record.get('outageSeconds')}s", at))
            status = {**status, "timeline": timeline}
        if seconds is not None:
            return _recovered(status, f"-primary Service of {body['spec']['target']['shardRef']} accepted a write "
                              f"on {record['to']} {seconds:.1f}s after the injection", seconds, at)
    elif spec.action == "containerKill":
        seconds, waiting = _container_kill_progress(status, pods, since)
        if seconds is not None:
            return _recovered(status, f"{count_of(len(status.get('affectedTargets') or []))} Ready again "
                              f"{seconds:.1f}s after their container was killed", seconds, at)
    else:
        seconds, waiting = _pod_kill_progress(body, status, pods, since, parse_time(at))
        if seconds is not None:
            return _recovered(status, f"{count_of(len(status.get('plannedTargets', [])), 'replacement pods')} Ready "
                              f"{seconds:.0f}s after the kill", seconds, at, name="Recovered")
    if elapsed >= duration_seconds(spec.duration):
        detail = f"not recovered within {spec.duration}: {waiting}"
        fields = {**status, "phase": "Completed", "phaseReason": detail, "verdict": "Failed", "completedAt": at,
                  "timeline": [*timeline, event("RecoveryTimedOut", detail, at)]}
        return Step(fields, _conditions("Completed", "RecoveryTimedOut", detail))
    return Step({**status, "phaseReason": waiting}, _conditions("Recovering", "Recovering", waiting))


def is_new_run(body: dict) -> bool:
    """No run yet, or the spec changed since the last one (a new generation is a new run)."""
    status = body.get("status") or {}
    return not status.get("phase") or status.get("observedGeneration") != body["metadata"].get("generation")


def run_fields(status: dict) -> dict:
    """The run's own fields of a status (conditions and observedGeneration are rewritten)."""
    return {k: v for k, v in status.items() if k not in ("conditions", "observedGeneration")}


def _iso(value: dt.datetime) -> str:
    return value.astimezone(dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def scheduled(schedule: str, status: dict, next_at: dt.datetime, at: str | None = None) -> Step:
    """A scheduled experiment (new, or changed) waiting for its next run."""
    at = at or now()
    message = f"next run at {_iso(next_at)}"
    fields = {"phase": "Scheduled", "runs": status.get("runs", 0), "nextRunAt": _iso(next_at), "phaseReason": message,
              "timeline": [event("Scheduled", f"{schedule} (UTC): {message}", at)]}
    return Step(fields, _conditions("Scheduled", "Scheduled", message))


def skipped(status: dict, next_at: dt.datetime, at: str | None = None) -> Step:
    """concurrencyPolicy Forbid: the due run is skipped while the last one is still active."""
    fields = {**run_fields(status), "nextRunAt": _iso(next_at),
              "timeline": [*status.get("timeline", []), event(
                  "Skipped", f"run due at {status['nextRunAt']} skipped: the last run is still active "
                  "(concurrencyPolicy Forbid)", at or now())][-100:]}
    return Step(fields, kept_conditions(status))


def next_run_fields(status: dict, next_at: dt.datetime) -> dict:
    """The schedule's fields of a run that starts now."""
    return {"runs": status.get("runs", 0) + 1, "lastScheduleTime": status["nextRunAt"], "nextRunAt": _iso(next_at)}


def with_event(step: Step, name: str, detail: str, at: str | None = None) -> Step:
    """`step` with an entry put before its last one (e.g. what the SLOs read, before Aborted)."""
    step.status["timeline"].insert(-1, event(name, detail, at or now()))
    return step

"""A ChaosExperiment's plan and progress, computed purely from its spec, its status and pods.

A run is a small state machine kept in status, so it survives operator restarts:
(new) -> Planned (dry run) | Aborted (blast radius) | Injecting -> Recovering -> Completed.
The intention (phase Injecting) is written before anything is deleted or applied, and a run
found in Injecting after a restart is never injected again.
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
TERMINAL = ("Planned", "Completed", "Aborted", "Failed")


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
    action: str | None = None  # "deletePods" | "applyChaosMesh"
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


def _event(event: str, detail: str, at: str) -> dict:
    return {"time": at, "event": event, "detail": detail[:1024]}


def _parse(stamp: str) -> dt.datetime:
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
    ready = phase in ("Planned", "Completed") and reason not in ("RecoveryTimedOut",)
    return [Condition("Ready", ready, reason, message),
            Condition("Progressing", phase in ("Injecting", "Recovering"), reason, message),
            Condition("Degraded", phase in ("Failed", "Aborted") or reason == "RecoveryTimedOut", reason, message)]


def start(body: dict, spec: ChaosExperimentSpec, the_plan: Plan, chaos_mesh_installed: bool,
          at: str | None = None) -> Step:
    """The first step of a new run (new object or new generation)."""
    at = at or now()
    targets = the_plan.targets
    base = {"plannedTargets": targets, "startedAt": at,
            "timeline": [_event("Planned", f"{spec.action} on {', '.join(targets) or 'nothing'} "
                                f"({len(targets)} of {the_plan.matched} matching pods)", at)]}

    def finish(phase: str, reason: str, message: str, verdict: str = "Inconclusive", **extra) -> Step:
        status = {**base, **extra, "phase": phase, "phaseReason": message, "verdict": verdict}
        if phase in TERMINAL:
            status["completedAt"] = at
        return Step(status, _conditions(phase, reason, message))

    if the_plan.refusal:
        reason, message = the_plan.refusal
        base["timeline"].append(_event("Aborted", message, at))
        return finish("Aborted", reason, message, abortReason=message)
    if spec.dry_run:
        return finish("Planned", "DryRun", f"dry run: would {spec.action} {', '.join(targets)}; nothing injected")
    if spec.action == "sqlFailover":
        return Step({**base, "phase": "Pending", "phaseReason": "waiting for the Shard failover engine"},
                    [Condition("Ready", False, "AwaitingShardFailoverSupport",
                               "sqlFailover is planned but not injected: the Shard failover engine that "
                               "promotes a secondary is a later issue"),
                     Condition("Progressing", False, "AwaitingShardFailoverSupport", "nothing injected"),
                     Condition("Degraded", False, "AwaitingShardFailoverSupport", "nothing injected")])
    if spec.action in CHAOS_MESH and not chaos_mesh_installed:
        message = f"{spec.action} needs Chaos Mesh's {CHAOS_MESH[spec.action]} CRD, which is not installed"
        return finish("Failed", "ChaosMeshNotInstalled", message)
    base["timeline"].append(_event("Injecting", f"about to {spec.action} {', '.join(targets)}", at))
    step = finish("Injecting", "Injecting", f"injecting {spec.action} into {len(targets)} pods")
    if spec.action == "podKill":
        step.action = "deletePods"
    else:
        step.action, step.children = "applyChaosMesh", chaos_mesh_children(body, spec, targets)
        step.status["generatedObjects"] = [
            {"apiVersion": c["apiVersion"], "kind": c["kind"], "name": c["metadata"]["name"],
             "namespace": c["metadata"]["namespace"]} for c in step.children]
    return step


def injected(status: dict, detail: str, at: str | None = None) -> Step:
    """After the action (or on finding an Injecting run after a restart: not repeated)."""
    at = at or now()
    fields = {**status, "phase": "Recovering", "phaseReason": detail,
              "timeline": [*status.get("timeline", []), _event("Injected", detail, at)]}
    return Step(fields, _conditions("Recovering", "Injected", detail))


def _injecting_time(status: dict) -> dt.datetime:
    stamp = next((e["time"] for e in status.get("timeline", []) if e["event"] == "Injecting"),
                 status.get("startedAt"))
    return _parse(stamp)


def recover(body: dict, spec: ChaosExperimentSpec, status: dict, pods: list[dict],
            at: str | None = None) -> Step:
    """Recovering -> Completed when the killed pods are replaced and Ready (podKill), or when
    the fault's duration is over (Chaos Mesh faults); times out after the duration."""
    at = at or now()
    since = _injecting_time(status)
    elapsed = (_parse(at) - since).total_seconds()
    timeline = list(status.get("timeline", []))
    if spec.action == "podKill":
        pool = [p for p in _alive(pods) if p["metadata"]["name"] in status.get("plannedTargets", [])
                or (body["spec"]["target"].get("selector")
                    and selector_matches(body["spec"]["target"]["selector"], p["metadata"].get("labels")))
                or (body["spec"]["target"].get("shardRef")
                    and p["metadata"]["name"].rsplit("-", 1)[0] == body["spec"]["target"]["shardRef"])]
        originals = [p["metadata"]["name"] for p in pool if p["metadata"]["name"] in status.get("plannedTargets", [])
                     and _parse(p["metadata"]["creationTimestamp"]) < since]
        replacements = [p for p in pool if _parse(p["metadata"]["creationTimestamp"]) >= since and pod_ready(p)]
        done = not originals and len(replacements) >= len(status.get("plannedTargets", []))
        if done:
            seconds = max(0.0, max(_parse(at), since).timestamp() - since.timestamp())
            detail = f"{len(replacements)} replacement pods Ready after {seconds:.0f}s"
            fields = {**status, "phase": "Completed", "phaseReason": detail, "verdict": "Passed",
                      "recoverySeconds": seconds, "completedAt": at,
                      "timeline": [*timeline, _event("Recovered", detail, at)]}
            return Step(fields, _conditions("Completed", "Recovered", detail))
        waiting = f"waiting for replacements: {len(replacements)}/{len(status.get('plannedTargets', []))} Ready"
    else:
        if elapsed >= duration_seconds(spec.duration):
            detail = f"fault ended after {spec.duration}; no SLO data to judge it (Prometheus is a later issue)"
            fields = {**status, "phase": "Completed", "phaseReason": detail, "verdict": "Inconclusive",
                      "completedAt": at, "timeline": [*timeline, _event("Completed", detail, at)]}
            return Step(fields, _conditions("Completed", "FaultEnded", detail))
        return Step({**status, "phaseReason": f"fault active for {elapsed:.0f}s of {spec.duration}"},
                    _conditions("Recovering", "FaultActive", f"fault active for {elapsed:.0f}s of {spec.duration}"))
    if elapsed >= duration_seconds(spec.duration):
        detail = f"not recovered within {spec.duration}: {waiting}"
        fields = {**status, "phase": "Completed", "phaseReason": detail, "verdict": "Failed", "completedAt": at,
                  "timeline": [*timeline, _event("RecoveryTimedOut", detail, at)]}
        return Step(fields, _conditions("Completed", "RecoveryTimedOut", detail))
    return Step({**status, "phaseReason": waiting}, _conditions("Recovering", "Recovering", waiting))


def is_new_run(body: dict) -> bool:
    """No run yet, or the spec changed since the last one (a new generation is a new run)."""
    status = body.get("status") or {}
    return not status.get("phase") or status.get("observedGeneration") != body["metadata"].get("generation")


def run_fields(status: dict) -> dict:
    """The run's own fields of a status (conditions and observedGeneration are rewritten)."""
    return {k: v for k, v in status.items() if k not in ("conditions", "observedGeneration")}

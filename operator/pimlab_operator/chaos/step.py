"""ChaosExperiment -> a governed, bounded fault: pods deleted or containers killed by the
operator, a switchover asked of a Shard, or Chaos Mesh objects; each step's intention is in
status before it is acted on, and whatever a run leaves behind is cleaned up (held by a
finalizer until it is)."""

from __future__ import annotations

import datetime as dt
import time

import httpx

from pimlab_operator import kube, reconcile
from pimlab_operator.chaos import desired, governance, grafana, inject
from pimlab_operator.chaos.model import ChaosExperimentSpec
from pimlab_operator.objects import label_selector
from pimlab_operator.schema import API_VERSION

#: Chaos Mesh objects are applied once, at injection, and removed by `inject.cleanup`: they
#: are not re-declared on every reconcile, so nothing is pruned here.
CHILDREN = ()
#: An SLO reading older than this is not a reading (the SLO's timer refreshes every 30 s).
SLO_MAX_AGE_SECONDS = 120
#: How long one pass of a recovering sqlFailover watches its Shard for the failover record
#: (one resync interval), so that the probe write follows the record within a poll and
#: `recoverySeconds` is not inflated by the wait for the next resync.
FAILOVER_WATCH_SECONDS, FAILOVER_POLL_SECONDS = 5.0, 0.25


def in_flight(body: dict) -> bool:
    """A run waiting, injecting or measuring recovery is followed every few seconds; a planned
    (dry run) or finished one is not."""
    phase = (body.get("status") or {}).get("phase")
    return bool(phase) and phase not in desired.TERMINAL

def _pods_and_shard(body: dict) -> tuple[list[dict], dict | None]:
    namespace = desired.target_namespace(body)
    shard_name = body["spec"]["target"].get("shardRef")
    if shard_name:
        shard = kube.get(API_VERSION, "Shard", shard_name, namespace)
        pods = kube.list_objects("v1", "Pod", namespace,
                                 label_selector=f"app.kubernetes.io/instance={shard_name}")
        return pods, shard
    labels = body["spec"]["target"]["selector"].get("matchLabels") or {}
    return kube.list_objects("v1", "Pod", namespace, label_selector(labels)), None


def await_failover_record(status: dict, shard: dict | None, seconds: float = FAILOVER_WATCH_SECONDS,
                           poll: float = FAILOVER_POLL_SECONDS) -> dict | None:
    """The Shard as soon as it records the failover this run caused, re-read every `poll`
    seconds for at most `seconds`; the last reading if it does not."""
    deadline = time.monotonic() + seconds
    while shard is not None and not desired.failover_record(status, shard) and time.monotonic() < deadline:
        time.sleep(poll)
        meta = shard["metadata"]
        shard = kube.get(API_VERSION, "Shard", meta["name"], meta["namespace"]) or shard
    return shard


def slo_readings(body: dict, spec: ChaosExperimentSpec, at: dt.datetime) -> dict[str, dict | str]:
    """Each abortIf SLO's live error budget, from its status (the SLO kind reads Prometheus on
    its timer), or why there is none: missing SLO, Prometheus unreadable, a stale reading."""
    readings: dict[str, dict | str] = {}
    for condition in spec.abort_if or []:
        slo = kube.get(API_VERSION, "SLO", condition.slo_ref, body["metadata"]["namespace"])
        if slo is None:
            readings[condition.slo_ref] = "no such SLO"
            continue
        status = slo.get("status") or {}
        budget = status.get("errorBudget")
        if not budget:
            why = next((c.get("message") for c in status.get("conditions") or [] if c["type"] == "BudgetCurrent"),
                       None)
            readings[condition.slo_ref] = f"no error budget in its status ({why or 'no Prometheus named'})"
            continue
        stamp = budget.get("evaluatedAt")
        age = (at - desired.parse_time(stamp)).total_seconds() if stamp else None
        if age is None or age > SLO_MAX_AGE_SECONDS:
            readings[condition.slo_ref] = f"its error budget was last read {stamp or 'never'}"
            continue
        readings[condition.slo_ref] = budget
    return readings


def probe_results(spec: ChaosExperimentSpec) -> dict[str, str | None]:
    """Each probe's GET now: None for a 2xx/3xx answer, else what went wrong."""
    results: dict[str, str | None] = {}
    for probe in spec.probes or []:
        try:
            resp = httpx.get(probe.url, timeout=probe.timeout_seconds)
            results[probe.name] = None if resp.status_code < 400 else f"HTTP {resp.status_code} from {probe.url}"
        except httpx.HTTPError as error:
            results[probe.name] = f"{type(error).__name__} from {probe.url}: {error}"[:300]
    return results


def _write(body: dict, step: desired.Step) -> dict:
    written = reconcile.write_status(body, step.status, step.conditions)
    grafana.announce(body, step.status)  # once written: a refused write (409) announces nothing
    return written


def _act(body: dict, spec: ChaosExperimentSpec, step: desired.Step) -> None:
    namespace = desired.target_namespace(body)
    targets = step.status["plannedTargets"]
    affected = targets
    try:
        if step.action == "deletePods":
            grace = (spec.parameters.grace_period_seconds if spec.parameters else None) or 0
            for pod in targets:
                kube.delete("v1", "Pod", pod, namespace, {"gracePeriodSeconds": grace})
            detail = f"deleted {', '.join(targets)} (grace {grace}s)"
        elif step.action == "killContainers":
            pods = [kube.get("v1", "Pod", name, namespace) for name in targets]
            detail = inject.kill_containers([p for p in pods if p], spec.parameters.container if spec.parameters else None,
                                            reconcile.context().settings.cri_socket)
        elif step.action == "requestSwitchover":
            affected = step.status["affectedTargets"]
            detail = inject.request_switchover(body, body["spec"]["target"]["shardRef"], namespace, affected[1])
        else:
            reconcile.apply_children(body, step.children)
            detail = f"created {', '.join(c['kind'] + '/' + c['metadata']['name'] for c in step.children)}"
    except inject.InjectionError as error:
        _write(body, desired.abort(desired.run_fields(body["status"]), error.reason, f"injection failed: {error}",
                                   phase="Failed"))
        return
    kube.post_event(body, "Warning", "FaultInjected", detail)
    body = _write(body, desired.injected(desired.run_fields(body["status"]), detail, affected=affected))
    if step.action == "requestSwitchover":
        # Follow the switchover now: waiting for the next resync (5 s) would count that wait
        # in recoverySeconds, a switchover itself taking well under a second.
        _recovering(body, spec, body.get("status") or {})


def _start(body: dict, spec: ChaosExperimentSpec, paused: str | None, carry: dict | None = None) -> None:
    """Plan, check governance and the SLOs, write the intention, then act."""
    pods, shard = _pods_and_shard(body)
    installed = spec.action not in desired.CHAOS_MESH or kube.kind_exists(
        desired.CHAOS_MESH_VERSION, desired.CHAOS_MESH[spec.action])
    target_ns = desired.target_namespace(body)
    refusal = governance.namespace_refusal(target_ns, kube.get("v1", "Namespace", target_ns, None),
                                           reconcile.context().settings.operator_namespace)
    if not refusal and paused and not spec.dry_run:
        refusal = ("KillSwitchEngaged", paused)
    checked = None
    if not refusal and spec.abort_if and not spec.dry_run:
        readings = slo_readings(body, spec, dt.datetime.now(dt.timezone.utc))
        checked = f"before injection: {governance.slo_summary(readings)}"
        breach = governance.slo_breach([c.to_k8s() for c in spec.abort_if], readings)
        if breach:
            refusal = (breach[0], f"not injected: {breach[1]}")
    if not refusal and spec.probes and not spec.dry_run:
        states, _ = governance.probe_verdict([p.to_k8s() for p in spec.probes], probe_results(spec), None)
        failing = [s for s in states if s["consecutiveFailures"]]
        carry = {**(carry or {}), "probes": states}
        if failing:  # the steady state must hold before anything is injected
            refusal = ("ProbeFailed", f"not injected: probe {failing[0]['name']} fails: {failing[0]['lastError']}")
    first = desired.start(body, spec, desired.plan(body, spec, pods, shard), installed, refusal=refusal,
                          shard=shard, slo_checked=checked, carry=carry)
    if first.action and desired.needs_cleanup(spec):
        body = kube.set_finalizer(body, desired.FINALIZER, True) or body
    body = _write(body, first)  # the intention, before anything is touched
    if first.action:
        _act(body, spec, first)


def _replan(body: dict, spec: ChaosExperimentSpec, status: dict) -> None:
    """A dry run's plan follows the pods (e.g. a Shard whose pods appeared after it) and the
    namespace's opt-in; written only when the targets or the outcome change."""
    pods, shard = _pods_and_shard(body)
    target_ns = desired.target_namespace(body)
    refusal = governance.namespace_refusal(target_ns, kube.get("v1", "Namespace", target_ns, None),
                                           reconcile.context().settings.operator_namespace)
    fresh = desired.start(body, spec, desired.plan(body, spec, pods, shard), True, refusal=refusal,
                          carry=_schedule_fields(status))
    if (fresh.status.get("plannedTargets"), fresh.status["phase"], fresh.status.get("abortReason")) != \
            (status.get("plannedTargets"), status["phase"], status.get("abortReason")):
        _write(body, fresh)


def _schedule_fields(status: dict) -> dict:
    return {k: status[k] for k in ("runs", "lastScheduleTime", "nextRunAt") if k in status}


def _finish_cleanup(body: dict) -> None:
    """Remove what a finished (or deleted) run left, then let go of the object."""
    removed = inject.cleanup(body)
    if not body["metadata"].get("deletionTimestamp"):
        body = _write(body, desired.cleaned(body, f"removed {', '.join(removed)}" if removed else "nothing left to remove"))
    kube.set_finalizer(body, desired.FINALIZER, False)
    if removed:
        kube.post_event(body, "Normal", "CleanedUp", f"removed {', '.join(removed)}")


def finalize(body: dict) -> None:
    """A deleted experiment that still holds our finalizer: clean up, then release it."""
    meta = body["metadata"]
    fresh = kube.get(body["apiVersion"], body["kind"], meta["name"], meta["namespace"])
    if fresh and desired.FINALIZER in (fresh["metadata"].get("finalizers") or []):
        _finish_cleanup(fresh)


def _schedule(body: dict, spec: ChaosExperimentSpec, status: dict, paused: str | None) -> bool:
    """A scheduled experiment: (re)schedule on a new generation, start a run when one is due
    (Forbid: skip while a run is active; Replace: abort it first). True when it acted."""
    at = dt.datetime.now(dt.timezone.utc)
    if desired.is_new_run(body):
        _write(body, desired.scheduled(spec.schedule, status, governance.next_run(spec.schedule, at)))
        return True
    if not status.get("nextRunAt") or desired.parse_time(status["nextRunAt"]) > at:
        return False
    if status.get("phase") in desired.ACTIVE:
        if (spec.concurrency_policy or "Forbid") == "Replace":
            _write(body, desired.abort(desired.run_fields(status), "Replaced",
                                       "the next scheduled run replaces this one (concurrencyPolicy Replace)"))
        else:
            _write(body, desired.skipped(status, governance.next_run(spec.schedule, at)))
        return True
    _start(body, spec, paused, desired.next_run_fields(status, governance.next_run(spec.schedule, at)))
    return True


def step(body: dict, spec: ChaosExperimentSpec) -> None:
    status = body.get("status") or {}
    paused = governance.kill_switch(kube.get("v1", "Namespace", reconcile.context().settings.operator_namespace, None))
    phase = status.get("phase")
    if phase in desired.ACTIVE and paused:
        _write(body, desired.abort(desired.run_fields(status), "KillSwitchEngaged", paused))
        return
    if phase not in desired.ACTIVE and desired.FINALIZER in (body["metadata"].get("finalizers") or []):
        _finish_cleanup(body)
        return
    if spec.schedule:
        if _schedule(body, spec, status, paused):
            return
    elif desired.is_new_run(body):
        _start(body, spec, paused, carry={"runs": 1})
        return
    if spec.dry_run and phase in ("DryRun", "Aborted"):
        _replan(body, spec, status)
    elif phase == "Running":  # interrupted between intention and record
        _write(body, desired.injected(desired.run_fields(status),
                                      "operator restarted during injection: not repeated"))
    elif phase == "Recovering":
        _recovering(body, spec, status)


def _recovering(body: dict, spec: ChaosExperimentSpec, status: dict) -> None:
    if spec.probes:
        states, breach = governance.probe_verdict([p.to_k8s() for p in spec.probes], probe_results(spec),
                                                  status.get("probes"))
        status = {**status, "probes": states}
        if breach:
            _write(body, desired.abort(desired.run_fields(status), *breach))
            return
    if spec.abort_if:
        readings = slo_readings(body, spec, dt.datetime.now(dt.timezone.utc))
        breach = governance.slo_breach([c.to_k8s() for c in spec.abort_if], readings)
        if breach:
            aborted = desired.abort(desired.run_fields(status), breach[0], breach[1])
            _write(body, desired.with_event(aborted, "SLOChecked", governance.slo_summary(readings)))
            return
    pods, shard = _pods_and_shard(body)
    write_at = None
    if spec.action == "sqlFailover":
        shard = await_failover_record(status, shard)
        if desired.failover_record(status, shard):
            write_at = inject.primary_write(shard)
    result = desired.recover(body, spec, desired.run_fields(status), pods, shard=shard, write_at=write_at)
    if result.status.get("phase") == "Completed" and spec.abort_if:
        readings = slo_readings(body, spec, dt.datetime.now(dt.timezone.utc))
        desired.with_event(result, "SLOChecked", f"after recovery: {governance.slo_summary(readings)}")
    _write(body, result)

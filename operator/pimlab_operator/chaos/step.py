"""ChaosExperiment -> a governed, bounded fault: pods deleted or containers killed by the
operator, a switchover asked of a Shard, or Chaos Mesh objects; each step's intention is in
status before it is acted on, and whatever a run leaves behind is cleaned up (held by a
finalizer until it is)."""

from __future__ import annotations

import datetime as dt
import time

import httpx

from pimlab_operator import kube, metrics, reconcile
from pimlab_operator.chaos import cron, desired, governance, grafana, inject, status
from pimlab_operator.chaos.model import ChaosExperimentSpec, ChaosExperimentStatus
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
    return bool(phase) and phase not in status.TERMINAL


def _pods_and_shard(body: dict, spec: ChaosExperimentSpec) -> tuple[list[dict], dict | None]:
    namespace = desired.target_namespace(body, spec)
    shard_name = spec.target.shard_ref
    if shard_name:
        shard = kube.get(API_VERSION, "Shard", shard_name, namespace)
        pods = kube.list_objects("v1", "Pod", namespace,
                                 label_selector=f"app.kubernetes.io/instance={shard_name}")
        return pods, shard
    labels = spec.target.selector.match_labels or {}
    return kube.list_objects("v1", "Pod", namespace, label_selector(labels)), None


def await_failover_record(run: ChaosExperimentStatus, shard: dict | None, seconds: float = FAILOVER_WATCH_SECONDS,
                           poll: float = FAILOVER_POLL_SECONDS) -> dict | None:
    """The Shard as soon as it records the failover this run caused, re-read every `poll`
    seconds for at most `seconds`; the last reading if it does not."""
    deadline = time.monotonic() + seconds
    while shard is not None and not status.failover_record(run, shard) and time.monotonic() < deadline:
        time.sleep(poll)
        meta = shard["metadata"]
        shard = kube.get(API_VERSION, "Shard", meta["name"], meta["namespace"]) or shard
    return shard


def slo_readings(body: dict, spec: ChaosExperimentSpec, at: dt.datetime) -> dict[str, dict | str]:
    """Each abortIf SLO's live error budget (`live_budgets`)."""
    return live_budgets(body["metadata"]["namespace"], [c.slo_ref for c in spec.abort_if or []], at)


def live_budgets(namespace: str, slo_names: list[str], at: dt.datetime) -> dict[str, dict | str]:
    """Each named SLO's live error budget, from its status (the SLO kind reads Prometheus on
    its timer), or why there is none: missing SLO, Prometheus unreadable, a stale reading."""
    readings: dict[str, dict | str] = {}
    for name in slo_names:
        slo = kube.get(API_VERSION, "SLO", name, namespace)
        if slo is None:
            readings[name] = "no such SLO"
            continue
        slo_status = slo.get("status") or {}
        budget = slo_status.get("errorBudget")
        if not budget:
            why = next((c.get("message") for c in slo_status.get("conditions") or [] if c["type"] == "BudgetCurrent"),
                       None)
            readings[name] = f"no error budget in its status ({why or 'no Prometheus named'})"
            continue
        stamp = budget.get("evaluatedAt")
        age = (at - status.parse_time(stamp)).total_seconds() if stamp else None
        if age is None or age > SLO_MAX_AGE_SECONDS:
            readings[name] = f"its error budget was last read {stamp or 'never'}"
            continue
        readings[name] = budget
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


def export_active(body: dict) -> None:
    """chaos_experiment_active from the object as it stands (read, or just written)."""
    meta = body["metadata"]
    metrics.chaos_experiment_active(meta["namespace"], meta["name"], body["spec"]["action"],
                                    status.fault_active(body))


def _write(body: dict, spec: ChaosExperimentSpec, step: status.Step) -> dict:
    written = reconcile.write_status(body, step.status, step.conditions)
    grafana.announce(body, spec, step.status)  # once written: a refused write (409) announces nothing
    export_active(written)
    return written


def _act(body: dict, spec: ChaosExperimentSpec, step: status.Step) -> None:
    namespace = desired.target_namespace(body, spec)
    targets = step.status.planned_targets
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
            affected = step.status.affected_targets
            detail = inject.request_switchover(body, spec.target.shard_ref, namespace, affected[1])
        else:
            reconcile.apply_children(body, step.children)
            detail = f"created {', '.join(c['kind'] + '/' + c['metadata']['name'] for c in step.children)}"
    except inject.InjectionError as error:
        _write(body, spec, status.abort(status.previous(body), error.reason, f"injection failed: {error}",
                                        phase="Failed"))
        return
    kube.post_event(body, "Warning", "FaultInjected", detail)
    body = _write(body, spec, status.injected(status.previous(body), detail, affected=affected))
    if step.action == "requestSwitchover":
        # Follow the switchover now: waiting for the next resync (5 s) would count that wait
        # in recoverySeconds, a switchover itself taking well under a second.
        _recovering(body, spec, status.previous(body))


def _start(body: dict, spec: ChaosExperimentSpec, paused: str | None,
           carry: ChaosExperimentStatus | None = None) -> None:
    """Plan, check governance and the SLOs, write the intention, then act. `carry`: the fields
    the new run keeps (the schedule's)."""
    pods, shard = _pods_and_shard(body, spec)
    installed = spec.action not in desired.CHAOS_MESH or kube.kind_exists(
        desired.CHAOS_MESH_VERSION, desired.CHAOS_MESH[spec.action])
    target_ns = desired.target_namespace(body, spec)
    refusal = governance.namespace_refusal(target_ns, kube.get("v1", "Namespace", target_ns, None),
                                           reconcile.context().settings.operator_namespace)
    if not refusal and paused and not spec.dry_run:
        refusal = ("KillSwitchEngaged", paused)
    checked = None
    if not refusal and spec.abort_if and not spec.dry_run:
        readings = slo_readings(body, spec, dt.datetime.now(dt.timezone.utc))
        checked = f"before injection: {governance.slo_summary(readings)}"
        breach = governance.slo_breach(spec.abort_if, readings)
        if breach:
            refusal = (breach[0], f"not injected: {breach[1]}")
    if not refusal and spec.probes and not spec.dry_run:
        states, _ = governance.probe_verdict(spec.probes, probe_results(spec), None)
        failing = [s for s in states if s.consecutive_failures]
        carry = status.updated(carry or ChaosExperimentStatus(), probes=states)
        if failing:  # the steady state must hold before anything is injected
            refusal = ("ProbeFailed", f"not injected: probe {failing[0].name} fails: {failing[0].last_error}")
    first = status.start(body, spec, pods, shard, installed, refusal=refusal, slo_checked=checked, carry=carry)
    if first.action and desired.needs_cleanup(spec):
        body = kube.set_finalizer(body, desired.FINALIZER, True) or body
    body = _write(body, spec, first)  # the intention, before anything is touched
    if first.action:
        _act(body, spec, first)


def _replan(body: dict, spec: ChaosExperimentSpec, run: ChaosExperimentStatus) -> None:
    """A dry run's plan follows the pods (e.g. a Shard whose pods appeared after it) and the
    namespace's opt-in; written only when the targets or the outcome change."""
    pods, shard = _pods_and_shard(body, spec)
    target_ns = desired.target_namespace(body, spec)
    refusal = governance.namespace_refusal(target_ns, kube.get("v1", "Namespace", target_ns, None),
                                           reconcile.context().settings.operator_namespace)
    fresh = status.start(body, spec, pods, shard, refusal=refusal, carry=status.schedule_fields(run))
    if (fresh.status.planned_targets, fresh.status.phase, fresh.status.abort_reason) != \
            (run.planned_targets, run.phase, run.abort_reason):
        _write(body, spec, fresh)


def _finish_cleanup(body: dict, spec: ChaosExperimentSpec | None) -> None:
    """Remove what a finished (or deleted) run left, then let go of the object. `spec`: None
    for a deleted object, whose status is not written again."""
    removed = inject.cleanup(body)
    if spec is not None and not body["metadata"].get("deletionTimestamp"):
        detail = f"removed {', '.join(removed)}" if removed else "nothing left to remove"
        body = _write(body, spec, status.cleaned(status.previous(body), detail))
    released = kube.set_finalizer(body, desired.FINALIZER, False)
    if released is not None:
        export_active(released)
    if removed:
        kube.post_event(body, "Normal", "CleanedUp", f"removed {', '.join(removed)}")


def finalize(body: dict) -> None:
    """A deleted experiment that still holds our finalizer: clean up, then release it."""
    meta = body["metadata"]
    fresh = kube.get(body["apiVersion"], body["kind"], meta["name"], meta["namespace"])
    if fresh and desired.FINALIZER in (fresh["metadata"].get("finalizers") or []):
        _finish_cleanup(fresh, None)


def _schedule(body: dict, spec: ChaosExperimentSpec, run: ChaosExperimentStatus, paused: str | None) -> bool:
    """A scheduled experiment: (re)schedule on a new generation, start a run when one is due
    (Forbid: skip while a run is active; Replace: abort it first). True when it acted."""
    at = dt.datetime.now(dt.timezone.utc)
    if status.is_new_run(body):
        _write(body, spec, status.scheduled(spec.schedule, run, cron.next_run(spec.schedule, at)))
        return True
    if not run.next_run_at or run.next_run_at > at:
        return False
    if run.phase in status.ACTIVE:
        if spec.concurrency_policy == "Replace":
            _write(body, spec, status.abort(run, "Replaced",
                                            "the next scheduled run replaces this one (concurrencyPolicy Replace)"))
        else:
            _write(body, spec, status.skipped(run, cron.next_run(spec.schedule, at)))
        return True
    _start(body, spec, paused, status.next_run_fields(run, cron.next_run(spec.schedule, at)))
    return True


def step(body: dict, spec: ChaosExperimentSpec) -> None:
    export_active(body)  # the level, on every reconcile: right after a restart too
    run = status.previous(body)
    paused = governance.kill_switch(kube.get("v1", "Namespace", reconcile.context().settings.operator_namespace, None))
    if run.phase in status.ACTIVE and paused:
        _write(body, spec, status.abort(run, "KillSwitchEngaged", paused))
        return
    if run.phase not in status.ACTIVE and desired.FINALIZER in (body["metadata"].get("finalizers") or []):
        _finish_cleanup(body, spec)
        return
    if spec.schedule:
        if _schedule(body, spec, run, paused):
            return
    elif status.is_new_run(body):
        _start(body, spec, paused, carry=ChaosExperimentStatus(runs=1))
        return
    if spec.dry_run and run.phase in ("DryRun", "Aborted"):
        _replan(body, spec, run)
    elif run.phase == "Running":  # interrupted between intention and record
        _write(body, spec, status.injected(run, "operator restarted during injection: not repeated"))
    elif run.phase == "Recovering":
        _recovering(body, spec, run)


def _recovering(body: dict, spec: ChaosExperimentSpec, run: ChaosExperimentStatus) -> None:
    if spec.probes:
        states, breach = governance.probe_verdict(spec.probes, probe_results(spec), run.probes)
        run = status.updated(run, probes=states)
        if breach:
            _write(body, spec, status.abort(run, *breach))
            return
    if spec.abort_if:
        readings = slo_readings(body, spec, dt.datetime.now(dt.timezone.utc))
        breach = governance.slo_breach(spec.abort_if, readings)
        if breach:
            aborted = status.abort(run, breach[0], breach[1])
            _write(body, spec, status.with_event(aborted, "SLOChecked", governance.slo_summary(readings)))
            return
    pods, shard = _pods_and_shard(body, spec)
    write_at = None
    if spec.action == "sqlFailover":
        shard = await_failover_record(run, shard)
        if status.failover_record(run, shard):
            write_at = inject.primary_write(shard)
    result = status.recover(spec, run, pods, shard=shard, write_at=write_at)
    if result.status.phase == "Completed" and spec.abort_if:
        readings = slo_readings(body, spec, dt.datetime.now(dt.timezone.utc))
        status.with_event(result, "SLOChecked", f"after recovery: {governance.slo_summary(readings)}")
    _write(body, spec, result)

"""Drill -> its PersonaLoad and ChaosExperiments, run as the state machine in `status.py`: read
what the cluster shows, decide purely, write the decision, then act. A finalizer is held while
a load may run or a fault be in place, so deleting a Drill mid-run stops the load and ends every
injection (the ChaosExperiments' own finalizers restore what they changed) before it goes."""

from __future__ import annotations

import datetime as dt
import logging
import time
from dataclasses import replace

from pimlab_operator import kube, metrics, reconcile
from pimlab_operator.chaos import governance
from pimlab_operator.chaos.step import live_budgets
from pimlab_operator.drill import desired, judge, status
from pimlab_operator.drill.model import DrillSpec, DrillStatus
from pimlab_operator.objects import label_selector, owned_by, selector_string
from pimlab_operator.reconcile import ChildKind
from pimlab_operator.render import owner_labels
from pimlab_operator.schema import API_VERSION, duration_seconds
from pimlab_operator.slo import desired as slo_queries
from pimlab_operator.slo import prometheus
from pimlab_operator.slo.model import SLOSpec
from pimlab_operator.slo.status import firing_alerts
from pimlab_operator.slo.step import prometheus_url

log = logging.getLogger(__name__)

#: Kept for evidence once the drill ends, so never pruned; watched, so their moves wake the drill.
CHILDREN = (ChildKind(API_VERSION, "PersonaLoad"), ChildKind(API_VERSION, "ChaosExperiment"))
#: How long deleting a Drill waits for its children to go (their finalizers restore what a
#: fault changed) before it reports and waits for the next event.
FINALIZE_WAIT_SECONDS, FINALIZE_POLL_SECONDS = 60.0, 1.0


def running(body: dict) -> bool:
    """A drill running, waiting for another, or still holding its finalizer is followed every
    couple of seconds (injections fire on time); a finished one is not."""
    stored = body.get("status") or {}
    phase = stored.get("phase") or "Pending"
    return phase in status.RUNNING or stored.get("reason") == "WaitingForDrill" or \
        desired.FINALIZER in (body["metadata"].get("finalizers") or [])


def _owned(body: dict, kind: str) -> list[dict]:
    meta = body["metadata"]
    return [{"apiVersion": API_VERSION, "kind": kind, **o}
            for o in kube.list_objects(API_VERSION, kind, meta["namespace"], label_selector(owner_labels(body)))
            if owned_by(o, meta["uid"])]


def _shards(lab: dict | None, namespace: str) -> list[dict]:
    if lab is None:
        return []
    selector = (lab.get("spec") or {}).get("shardSelector")
    return kube.list_objects(API_VERSION, "Shard", namespace, selector_string(selector))


NO_TRAFFIC = "no traffic recorded in the window"


def slo_over_window(namespace: str, name: str, window: tuple[dt.datetime, dt.datetime], url: str | None) -> judge.SloReading:
    """One hypothesis SLO over the drill's window: its SLI's error ratio and event rate at the
    window's end over the window's length (the SLO's own PromQL), its page alerts firing now
    and its lifetime budget left."""
    slo = kube.get(API_VERSION, "SLO", name, namespace)
    if slo is None:
        return judge.SloReading(name, problem="no such SLO")
    spec = SLOSpec.model_validate(slo["spec"])
    length = f"{max(round((window[1] - window[0]).total_seconds()), 1)}s"
    query = slo_queries.error_ratio_query(spec, length)
    base = judge.SloReading(name, objective=spec.objective, window_seconds=duration_seconds(spec.window), query=query)
    if not url:
        return replace(base, problem="no Prometheus named (the Lab's spec.observability.prometheusUrl or the"
                       " operator's --prometheus-url)")
    settings = reconcile.context().settings
    try:
        ratio = prometheus.instant_value(url, query, window[1], settings.prometheus_timeout_seconds)
        rates = slo_queries.event_rate_queries(spec, length)
        total = prometheus.instant_value(url, rates[1], window[1], settings.prometheus_timeout_seconds) if rates else None
        now = prometheus.read_slo(url, name, namespace, settings.prometheus_timeout_seconds)
    except prometheus.PrometheusUnavailable as error:
        return replace(base, problem=str(error)[:300])
    pages = tuple(sorted({a.alert for a in firing_alerts(now["alerts"]) if a.severity == "page"}))
    return replace(base, error_ratio=ratio, total_rate=total, firing_pages=pages,
                   lifetime_remaining=now["series"].get("slo:error_budget:remaining_ratio"),
                   problem=None if ratio is not None else NO_TRAFFIC)


def budget_left(namespace: str, name: str, lab: dict | None, now: dt.datetime, url: str | None) -> float | None:
    """What is left of SLO `name`'s budget now: 1 - the budget burned since its window began, or
    since the Lab was made if that is later (bad events over the window's allowance at the
    traffic rate seen; judge.budget). The SLO's own figure divides by the history Prometheus
    holds, so on a young lab one failover reads as an exhausted 30-day budget."""
    slo = kube.get(API_VERSION, "SLO", name, namespace)
    if slo is None or not url:
        return None
    start = now - dt.timedelta(seconds=duration_seconds(SLOSpec.model_validate(slo["spec"]).window))
    made = ((lab or {}).get("metadata") or {}).get("creationTimestamp")
    if made:
        start = max(start, dt.datetime.fromisoformat(made.replace("Z", "+00:00")))
    seconds = (now - start).total_seconds()
    if seconds <= 0:
        return None
    reading = slo_over_window(namespace, name, (start, now), url)
    if reading.problem == NO_TRAFFIC:
        return 1.0  # nothing asked of the SLO yet: nothing burned
    burned = judge.budget(reading, seconds, None).burned
    return None if burned is None else round(1 - burned, 6)


def _evidence(body: dict, spec: DrillSpec, run: DrillStatus, drills: list[dict]) -> status.Evidence:
    namespace = body["metadata"]["namespace"]
    url = prometheus_url(namespace, reconcile.context().settings.prometheus_url)
    window = (run.window.start, run.window.end)
    readings = [slo_over_window(namespace, h.name, window, url) for h in spec.hypotheses.slos or []]
    earlier = judge.last_passed(body["metadata"]["name"], drills) if spec.compare_to else None
    return status.Evidence(readings, earlier)


def observe(body: dict, spec: DrillSpec, run: DrillStatus, now: dt.datetime) -> status.Observed:
    """Everything the state machine decides from, read once."""
    meta = body["metadata"]
    namespace = meta["namespace"]
    settings = reconcile.context().settings
    phase = run.phase or "Pending"
    lab = kube.get(API_VERSION, "Lab", spec.lab_ref, namespace)
    drills = [d for d in kube.list_objects(API_VERSION, "Drill", namespace) if d["metadata"]["name"] != meta["name"]]
    seen = status.Observed(lab=lab, other_drills=[d for d in drills if (d.get("spec") or {}).get("labRef") == spec.lab_ref])
    if phase == "Pending":
        return seen
    loads = {o["metadata"]["name"]: o for o in _owned(body, "PersonaLoad")}
    seen.load = loads.get(desired.load_name(meta["name"]))
    seen.experiments = {o["metadata"]["name"]: o for o in _owned(body, "ChaosExperiment")}
    if phase not in status.RUNNING:
        return seen
    seen.kill_switch = governance.kill_switch(kube.get("v1", "Namespace", settings.operator_namespace, None))
    seen.shards = _shards(lab, namespace)
    if phase == "Preflight" or (spec.abort.fast_burn and phase in ("Baseline", "Injecting", "Recovering")):
        seen.readings = live_budgets(namespace, judge.watched_slos(spec), now)
    if phase == "Preflight" and spec.abort.preflight.min_budget_remaining is not None:
        url = prometheus_url(namespace, settings.prometheus_url)
        for name, reading in seen.readings.items():
            left = budget_left(namespace, name, lab, now, url) if isinstance(reading, dict) else None
            if left is not None:
                seen.readings[name] = {**reading, "remaining": left}
    if status.ready_to_judge(run, seen.load):
        seen.evidence = _evidence(body, spec, run, drills)
    return seen


def _stop(body: dict, seen: status.Observed) -> None:
    """End the load and every injection still in flight (deleting them: the load's Job goes
    with it, an experiment's finalizer restores what it changed)."""
    namespace = body["metadata"]["namespace"]
    if seen.load is not None and (seen.load.get("status") or {}).get("phase") not in status.LOAD_ENDED:
        kube.delete(API_VERSION, "PersonaLoad", seen.load["metadata"]["name"], namespace, {"propagationPolicy": "Background"})
    for name, experiment in seen.experiments.items():
        if (experiment.get("status") or {}).get("phase") not in status.EXPERIMENT_ENDED:
            kube.delete(API_VERSION, "ChaosExperiment", name, namespace)


def step(body: dict, spec: DrillSpec) -> None:
    now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    run = status.previous(body)
    seen = observe(body, spec, run, now)
    decided = status.advance(body["metadata"]["name"], body["metadata"].get("creationTimestamp") or "", spec, run,
                             seen, now)
    if decided.finalizer:
        body = kube.set_finalizer(body, desired.FINALIZER, True) or body
    body = reconcile.write_status(body, decided.status, decided.conditions)  # the decision, before any act
    if decided.status.phase:
        metrics.drill_phase(body["metadata"]["namespace"], body["metadata"]["name"], decided.status.phase)
    for type_, reason, message in decided.events:
        kube.post_event(body, type_, reason, message)
    if decided.create_load or decided.inject:
        reconcile.apply_children(body, desired.children(body, spec, decided.create_load, decided.inject))
    if decided.stop:
        _stop(body, seen)
    if decided.finalizer is False:
        kube.set_finalizer(body, desired.FINALIZER, False)


def finalize(body: dict) -> None:
    """A deleted Drill that still holds its finalizer: delete its load and its experiments,
    wait until they are gone (the experiments' finalizers clean up first), then let go."""
    meta = body["metadata"]
    fresh = kube.get(body["apiVersion"], body["kind"], meta["name"], meta["namespace"])
    if not fresh or desired.FINALIZER not in (fresh["metadata"].get("finalizers") or []):
        return
    deadline = time.monotonic() + FINALIZE_WAIT_SECONDS
    while True:
        left = [*_owned(fresh, "PersonaLoad"), *_owned(fresh, "ChaosExperiment")]
        for child in left:
            if not child["metadata"].get("deletionTimestamp"):
                kube.delete(API_VERSION, child["kind"], child["metadata"]["name"], meta["namespace"],
                            {"propagationPolicy": "Background"})
        if not left or time.monotonic() > deadline:
            break
        time.sleep(FINALIZE_POLL_SECONDS)
    if left:
        names = ", ".join(f"{c['kind']}/{c['metadata']['name']}" for c in left)
        log.warning("drill %s/%s: %s still being removed; keeping the finalizer", meta["namespace"], meta["name"], names)
        kube.post_event(fresh, "Warning", "CleanupPending", f"still being removed: {names}; the drill stays until they are gone")
        return
    kube.set_finalizer(fresh, desired.FINALIZER, False)
    kube.post_event(fresh, "Normal", "CleanedUp", "load stopped and every injection ended")

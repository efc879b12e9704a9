"""Who may be hit, and when chaos must stop: namespace opt-in, protected namespaces, the kill
switch, abortIf on SLO burn and the steady-state probes. Pure: the step reads the objects, the
SLOs' readings and the probes' answers and hands them in.

The switches, all on Namespaces so `kubectl label/annotate` is the whole interface:
- a target namespace opts in with the label `pim-sre.lab/chaos=enabled`;
- `kube-system`, `kube-public`, `kube-node-lease` and the operator's own namespace are never
  targets, labelled or not;
- the kill switch is the annotation `pim-sre.lab/chaos-paused=true` on the operator's namespace
  (`operator_namespace` of the operator's settings: $PIMLAB_OPERATOR_NAMESPACE, default pim-system): while it is set no fault is injected and
  every running experiment is aborted and cleaned up. Dry runs still plan (they change nothing).
"""

from __future__ import annotations

from pimlab_operator.chaos.model import AbortCondition, Probe, ProbeState

OPT_IN_LABEL = ("pim-sre.lab/chaos", "enabled")
KILL_SWITCH_ANNOTATION = "pim-sre.lab/chaos-paused"
PROTECTED_NAMESPACES = ("kube-system", "kube-public", "kube-node-lease")


def namespace_refusal(target: str, namespace: dict | None, operator_ns: str) -> tuple[str, str] | None:
    """(reason, message) when `target` may not be hit, else None."""
    if target in PROTECTED_NAMESPACES or target == operator_ns:
        return ("ProtectedNamespace", f"namespace {target} is protected: chaos never targets kube-system, "
                f"kube-public, kube-node-lease or the operator's namespace ({operator_ns})")
    labels = ((namespace or {}).get("metadata") or {}).get("labels") or {}
    if labels.get(OPT_IN_LABEL[0]) != OPT_IN_LABEL[1]:
        return ("NamespaceNotOptedIn", f"namespace {target} has not opted in to chaos: "
                f"`kubectl label namespace {target} {OPT_IN_LABEL[0]}={OPT_IN_LABEL[1]}`")
    return None


def kill_switch(operator_ns_obj: dict | None) -> str | None:
    """The kill switch's message when it is engaged, else None."""
    annotations = ((operator_ns_obj or {}).get("metadata") or {}).get("annotations") or {}
    if str(annotations.get(KILL_SWITCH_ANNOTATION, "")).lower() in ("true", "1", "yes"):
        name = operator_ns_obj["metadata"]["name"]
        return (f"the chaos kill switch is engaged (annotation {KILL_SWITCH_ANNOTATION}=true on namespace "
                f"{name}): no fault is injected until it is removed")
    return None


def slo_breach(abort_if: list[AbortCondition], readings: dict[str, dict | str]) -> tuple[str, str] | None:
    """(reason, message with the measured values) when an abortIf condition fires.

    `readings[sloRef]` is the SLO's errorBudget as read from Prometheus now, or a string saying
    why it could not be read: unreadable is a breach (fail safe). A budget with no figure yet
    (no traffic) does not fire."""
    for condition in abort_if:
        name = condition.slo_ref
        reading = readings.get(name)
        if reading is None or isinstance(reading, str):
            return ("SLOUnreadable", f"SLO {name} could not be read during the run ({reading or 'no reading'}): "
                    "aborting, fail safe")
        burn = reading.get("worstBurnRate", reading.get("burnRate1h"))
        limit = condition.burn_rate_above
        if limit is not None and burn is not None and burn > limit:
            window = reading.get("worstBurnWindow", "1h")
            return ("SLOBurnRateExceeded", f"SLO {name} burns its budget at {burn:g}x over {window} "
                    f"(abortIf burnRateAbove {limit:g})")
        remaining, floor = reading.get("remaining"), condition.budget_remaining_below
        if floor is not None and remaining is not None and remaining < floor:
            return ("SLOBudgetExhausted", f"SLO {name} has {remaining:g} of its error budget left "
                    f"(abortIf budgetRemainingBelow {floor:g})")
    return None


def slo_summary(readings: dict[str, dict | str]) -> str:
    """One line of what each SLO read, for the timeline."""
    parts = []
    for name, reading in sorted(readings.items()):
        if isinstance(reading, str):
            parts.append(f"{name}: unreadable ({reading})")
        else:
            burn = reading.get("worstBurnRate", reading.get("burnRate1h"))
            parts.append(f"{name}: burn {'n/a' if burn is None else f'{burn:g}x'}, "
                         f"budget left {reading.get('remaining', 'n/a')}")
    return "; ".join(parts)


def probe_verdict(probes: list[Probe], results: dict[str, str | None],
                  previous: list[ProbeState] | None) -> tuple[list[ProbeState], tuple[str, str] | None]:
    """(each probe's state, (reason, message) when one failed `failureThreshold` times in a row).
    `results[name]` is None for a pass, else what went wrong."""
    before = {p.name: p.consecutive_failures for p in previous or []}
    states, breach = [], None
    for probe in probes:
        name, error = probe.name, results.get(probe.name)
        failures = 0 if error is None else before.get(name, 0) + 1
        states.append(ProbeState(name=name, consecutive_failures=failures, last_error=error[:1024] if error else None))
        threshold = probe.failure_threshold
        if error is not None and failures >= threshold and breach is None:
            breach = ("ProbeFailed", f"probe {name} failed {failures} time(s) in a row "
                      f"(failureThreshold {threshold}): {error}")
    return states, breach

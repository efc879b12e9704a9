"""Who may be hit, and when chaos must stop: namespace opt-in, protected namespaces, the kill
switch, abortIf on SLO burn, and the cron schedule. Pure: the step reads the objects and the
Prometheus readings and hands them in.

The switches, all on Namespaces so `kubectl label/annotate` is the whole interface:
- a target namespace opts in with the label `pim-sre.lab/chaos=enabled`;
- `kube-system`, `kube-public`, `kube-node-lease` and the operator's own namespace are never
  targets, labelled or not;
- the kill switch is the annotation `pim-sre.lab/chaos-paused=true` on the operator's namespace
  (`operator_namespace` of the operator's settings: $PIMLAB_OPERATOR_NAMESPACE, default pim-system): while it is set no fault is injected and
  every running experiment is aborted and cleaned up. Dry runs still plan (they change nothing).
"""

from __future__ import annotations

import datetime as dt

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


def slo_breach(abort_if: list[dict], readings: dict[str, dict | str]) -> tuple[str, str] | None:
    """(reason, message with the measured values) when an abortIf condition fires.

    `readings[sloRef]` is the SLO's errorBudget as read from Prometheus now, or a string saying
    why it could not be read: unreadable is a breach (fail safe). A budget with no figure yet
    (no traffic) does not fire."""
    for condition in abort_if:
        name = condition["sloRef"]
        reading = readings.get(name)
        if reading is None or isinstance(reading, str):
            return ("SLOUnreadable", f"SLO {name} could not be read during the run ({reading or 'no reading'}): "
                    "aborting, fail safe")
        burn = reading.get("worstBurnRate", reading.get("burnRate1h"))
        limit = condition.get("burnRateAbove")
        if limit is not None and burn is not None and burn > limit:
            window = reading.get("worstBurnWindow", "1h")
            return ("SLOBurnRateExceeded", f"SLO {name} burns its budget at {burn:g}x over {window} "
                    f"(abortIf burnRateAbove {limit:g})")
        remaining, floor = reading.get("remaining"), condition.get("budgetRemainingBelow")
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


def probe_verdict(probes: list[dict], results: dict[str, str | None],
                  previous: list[dict] | None) -> tuple[list[dict], tuple[str, str] | None]:
    """(each probe's state, (reason, message) when one failed `failureThreshold` times in a row).
    `results[name]` is None for a pass, else what went wrong."""
    before = {p["name"]: p.get("consecutiveFailures", 0) for p in previous or []}
    states, breach = [], None
    for probe in probes:
        name, error = probe["name"], results.get(probe["name"])
        failures = 0 if error is None else before.get(name, 0) + 1
        states.append({"name": name, "consecutiveFailures": failures, **({"lastError": error[:1024]} if error else {})})
        threshold = probe.get("failureThreshold", 1)
        if error is not None and failures >= threshold and breach is None:
            breach = ("ProbeFailed", f"probe {name} failed {failures} time(s) in a row "
                      f"(failureThreshold {threshold}): {error}")
    return states, breach


# --- cron ----------------------------------------------------------------------------------

_MACROS = {"@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *",
           "@weekly": "0 0 * * 0", "@daily": "0 0 * * *", "@midnight": "0 0 * * *", "@hourly": "0 * * * *"}
_RANGES = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 6))


class CronError(ValueError):
    """A schedule this parser does not accept."""


def _field(text: str, low: int, high: int) -> set[int]:
    values: set[int] = set()
    for part in text.split(","):
        body, _, step_text = part.partition("/")
        step = int(step_text) if step_text else 1
        if body == "*":
            start, end = low, high
        elif "-" in body:
            start, end = (int(x) for x in body.split("-", 1))
        else:
            start = end = int(body)
            if step_text:
                end = high
        if step < 1 or start < low or end > high or start > end:
            raise CronError(f"{part!r} is outside {low}..{high}")
        values.update(range(start, end + 1, step))
    return values


def parse_cron(schedule: str) -> list[set[int]]:
    """minute, hour, day of month, month, day of week (0 = Sunday; 7 accepted as Sunday)."""
    fields = _MACROS.get(schedule.strip(), schedule).split()
    if len(fields) != 5:
        raise CronError(f"schedule {schedule!r} needs 5 fields (minute hour day month weekday) or a macro")
    try:
        parsed = [_field(f, lo, hi if i != 4 else 7) for i, (f, (lo, hi)) in enumerate(zip(fields, _RANGES))]
    except ValueError as error:
        raise CronError(f"schedule {schedule!r}: {error}") from error
    if 7 in parsed[4]:
        parsed[4] = (parsed[4] - {7}) | {0}
    return parsed


def next_run(schedule: str, after: dt.datetime) -> dt.datetime:
    """The first minute strictly after `after` (UTC) that the schedule names. Day of month and
    day of week are OR-ed when both are restricted, as cron does."""
    minutes, hours, days, months, weekdays = parse_cron(schedule)
    parts = _MACROS.get(schedule.strip(), schedule).split()
    dom_star, dow_star = parts[2] == "*", parts[4] == "*"
    at = after.astimezone(dt.timezone.utc).replace(second=0, microsecond=0) + dt.timedelta(minutes=1)
    limit = at + dt.timedelta(days=5 * 366)  # Feb 29 comes round within 5 years; Feb 31 never
    while at < limit:
        if at.month not in months:
            at = (at.replace(day=1, hour=0, minute=0) + dt.timedelta(days=32)).replace(day=1)
            continue
        day_ok = at.day in days
        weekday_ok = (at.isoweekday() % 7) in weekdays
        if not ((day_ok and weekday_ok) if (dom_star or dow_star) else (day_ok or weekday_ok)):
            at = at.replace(hour=0, minute=0) + dt.timedelta(days=1)
            continue
        if at.hour not in hours:
            at = at.replace(minute=0) + dt.timedelta(hours=1)
            continue
        if at.minute not in minutes:
            at += dt.timedelta(minutes=1)
            continue
        return at
    raise CronError(f"schedule {schedule!r} names no time within 5 years")

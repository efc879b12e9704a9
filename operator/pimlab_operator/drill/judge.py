"""A drill's verdict (pure): what each SLO's budget paid for the drill, every hypothesis judged,
the verdict and the 0..100 score; and the checks that refuse or stop a drill (preflight, fast
burn). docs/drills.md states the formulas with worked numbers.

Budget burned, over the drill's own window (never "the SLO window so far"):

    mean burn rate = error ratio over the drill / (1 - objective)
    burned         = mean burn rate x drill length / SLO window

i.e. the drill's bad events over the bad events the SLO window allows at the drill's traffic
rate. The SLO's own `remaining` (its status) covers whatever history Prometheus holds: it is
shown beside, as `lifetimeRemaining`, never judged.

Score: each hypothesis earns 1 when met, and when missed `2 - observed/limit` clamped to 0..1
(a miss by half the limit earns 0.5, by the whole limit or more 0); one with no observation or
a zero limit earns 0 when missed. The score is 100 x the mean, rounded; 0 when more writes were
lost than maxLostWrites, whatever else held, and 0 for an aborted drill.
"""

from __future__ import annotations

from dataclasses import dataclass

from pimlab_operator.chaos.governance import slo_breach
from pimlab_operator.chaos.model import AbortCondition
from pimlab_operator.drill.model import BudgetFigures, DrillSpec, DrillStatus, HypothesisResult

LOST_WRITES = "maxLostWrites"
#: Every shard the drill wrote to keeps an intact audit chain (no limit to set: a broken chain fails).
AUDIT_CHAINS = "auditChainsIntact"


@dataclass(frozen=True)
class SloReading:
    """What was read for one hypothesis SLO over the drill's window, or why not (`problem`)."""

    name: str
    objective: float | None = None
    window_seconds: float | None = None  # the SLO's compliance window
    error_ratio: float | None = None  # bad / all events over the drill's window
    total_rate: float | None = None  # all events per second over the drill's window
    lifetime_remaining: float | None = None  # the SLO's own budget left (its whole history)
    firing_pages: tuple[str, ...] | None = None  # page alerts firing when judged; None: not read
    query: str = ""  # the error ratio's PromQL
    problem: str | None = None


def budget(reading: SloReading, drill_seconds: float, limit: float | None) -> BudgetFigures:
    """One SLO's bill for the drill: bad and total events, mean burn rate, budget burned."""
    figures = BudgetFigures(slo=reading.name, objective=reading.objective, limit=limit,
                            lifetime_remaining=reading.lifetime_remaining)
    if reading.error_ratio is None or reading.objective is None or not reading.window_seconds:
        return figures
    ratio = min(max(reading.error_ratio, 0.0), 1.0)
    mean_burn = ratio / (1 - reading.objective / 100)
    total = None if reading.total_rate is None else reading.total_rate * drill_seconds
    return figures.model_copy(update={
        "mean_burn_rate": round(mean_burn, 6),
        "burned": round(mean_burn * drill_seconds / reading.window_seconds, 9),
        "total_events": None if total is None else round(total, 3),
        "bad_events": None if total is None else round(total * ratio, 3),
    })


def watched_slos(spec: DrillSpec) -> list[str]:
    """The SLOs whose live budgets the preflight and the fast-burn abort read."""
    names = [h.name for h in spec.hypotheses.slos or []]
    fast = spec.abort.fast_burn
    return sorted(set(names) | set(fast.slos if fast else []))


def preflight_refusal(spec: DrillSpec, readings: dict[str, dict | str]) -> tuple[str, str] | None:
    """(reason, message) when the drill must not start: a hypothesis SLO unreadable, with less
    budget left than abort.preflight.minBudgetRemaining, or paging (refuseWhilePaging)."""
    preflight = spec.abort.preflight
    names = [h.name for h in spec.hypotheses.slos or []]
    if preflight.min_budget_remaining is not None:
        floors = [AbortCondition(slo_ref=n, budget_remaining_below=preflight.min_budget_remaining) for n in names]
        breach = slo_breach(floors, readings)
        if breach:
            return breach[0], f"preflight: {breach[1]}"
    if preflight.refuse_while_paging:
        for name in names:
            reading = readings.get(name)
            if not isinstance(reading, dict):
                return "SLOUnreadable", f"preflight: SLO {name} could not be read ({reading or 'no reading'})"
            pages = sorted(a.get("alert", "?") for a in reading.get("firingAlerts") or [] if a.get("severity") == "page")
            if pages:
                return "PageFiring", f"preflight: SLO {name} is paging ({', '.join(pages)}): not starting a drill on top"
    return None


def fast_burn_breach(spec: DrillSpec, readings: dict[str, dict | str]) -> tuple[str, str] | None:
    """(reason, message) when abort.fastBurn fires (an unreadable SLO fires it: fail safe)."""
    fast = spec.abort.fast_burn
    if not fast:
        return None
    return slo_breach([AbortCondition(slo_ref=n, burn_rate_above=fast.burn_rate) for n in fast.slos], readings)


def _result(name: str, observed: float | None, limit: float, source: str) -> HypothesisResult:
    met = observed is not None and observed <= limit
    return HypothesisResult(name=name, observed=None if observed is None else round(observed, 6), limit=limit,
                            met=met, source=source[:1024])


def last_passed(name: str, drills: list[dict]) -> dict | None:
    """The last Passed Drill (latest finishedAt) whose name shares `name`'s prefix before the last '-'."""
    prefix = name.rsplit("-", 1)[0]
    passed = [d for d in drills if d["metadata"]["name"] != name and d["metadata"]["name"].rsplit("-", 1)[0] == prefix
              and (d.get("status") or {}).get("verdict") == "Passed" and (d.get("status") or {}).get("finishedAt")]
    return max(passed, key=lambda d: d["status"]["finishedAt"], default=None)


def hypotheses(spec: DrillSpec, status: DrillStatus, readings: list[SloReading],
               earlier: DrillStatus | None = None, earlier_name: str = "") -> tuple[list[HypothesisResult], list[BudgetFigures]]:
    """Every hypothesis judged from the drill's own figures (status: window, ledger, recovery,
    latency) and the SLO readings; `earlier`: the compareTo drill's status."""
    window = status.window
    drill_seconds = (window.end - window.start).total_seconds() if window and window.start and window.end else 0.0
    by_name = {r.name: r for r in readings}
    results, budgets = [], []
    for slo in spec.hypotheses.slos or []:
        reading = by_name.get(slo.name, SloReading(slo.name, problem="not read"))
        bill = budget(reading, drill_seconds, slo.max_budget_burn)
        budgets.append(bill)
        why = f" ({reading.problem})" if reading.problem else ""
        results.append(_result(f"slo/{slo.name}/budgetBurn", bill.burned, slo.max_budget_burn,
                               f"Prometheus, over the drill's {drill_seconds:.0f} s: {reading.query}{why}"))
        if slo.no_page_after_recovery:
            pages = reading.firing_pages
            results.append(_result(f"slo/{slo.name}/noPageAfterRecovery", None if pages is None else len(pages), 0,
                                   f"Prometheus alerts of SLO {slo.name} with severity page, firing when judged: "
                                   f"{'not read' if pages is None else ', '.join(pages) or 'none'}{why}"))
    recovery = status.recovery
    if spec.hypotheses.max_recovery_seconds is not None:
        results.append(_result("maxRecoverySeconds", recovery.seconds if recovery else None,
                               spec.hypotheses.max_recovery_seconds,
                               "PersonaLoad status.writeOutages: the longest client-seen write outage of any shard"))
    ledger = status.ledger
    results.append(_result(LOST_WRITES, ledger.lost if ledger else None, spec.hypotheses.max_lost_writes,
                           "PersonaLoad status.ledger.lost: acknowledged writes missing on read-back"
                           + ("" if ledger else " (no ledger in the PersonaLoad's status)")))
    if ledger and ledger.audit_chains_checked:
        broken = ledger.broken_audit_chains or []
        results.append(_result(AUDIT_CHAINS, len(broken), 0,
                               f"PersonaLoad status.ledger.auditChains: {ledger.audit_chains_checked} shard(s) "
                               f"written to, verified after the run{': ' + '; '.join(broken) if broken else ''}"))
    latency = {entry.journey: entry for entry in status.latency or []}
    for ceiling in spec.hypotheses.latency or []:
        measured = latency.get(ceiling.journey)
        for pct, limit in (("p95", ceiling.p95_ms), ("p99", ceiling.p99_ms)):
            if limit is not None:
                results.append(_result(f"latency/{ceiling.journey}/{pct}", getattr(measured, pct) if measured else None,
                                       limit, f"PersonaLoad status.summary.byJourney.{ceiling.journey}.latencyMs.{pct}"))
    if spec.compare_to and earlier:
        before = {entry.journey: entry for entry in earlier.latency or []}
        for journey, now in sorted(latency.items()):
            then = before.get(journey)
            if now.p95 is None or then is None or not then.p95:
                continue
            results.append(_result(f"compareTo/{journey}/p95WorsePercent", (now.p95 / then.p95 - 1) * 100,
                                   spec.compare_to.p95_worse_percent,
                                   f"p95 {now.p95:g} ms against {then.p95:g} ms in Drill {earlier_name}"))
    return results, budgets


def _credit(result: HypothesisResult) -> float:
    if result.met:
        return 1.0
    if result.observed is None or result.limit <= 0:
        return 0.0
    return min(max(2 - result.observed / result.limit, 0.0), 1.0)


def verdict(spec: DrillSpec, results: list[HypothesisResult]) -> tuple[str, int]:
    """(Passed or Failed, score): Passed when every hypothesis is met; lost writes over
    maxLostWrites fail the drill and zero the score, whatever else held."""
    lost = next((r for r in results if r.name == LOST_WRITES), None)
    if lost is not None and lost.observed is not None and lost.observed > spec.hypotheses.max_lost_writes:
        return "Failed", 0
    score = round(100 * sum(_credit(r) for r in results) / len(results)) if results else 100
    return ("Passed" if all(r.met for r in results) else "Failed"), score

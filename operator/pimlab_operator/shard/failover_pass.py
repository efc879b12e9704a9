"""One pass of the failover manager: observe through a driver, `failover.decide`, act in order.

Shared by both engines and by whoever holds the labels: the operator's Shard step (labels on
pods, through the apiserver) and the local PostgreSQL tests (labels in a dict). The driver is
the only thing that touches a database; `set_label` is the only thing that touches routing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable, Protocol

from pimlab_operator.shard.failover import Action, Decision, Memory, Observation, Policy, decide
from pimlab_operator.shard.model import FailoverRecord


class Driver(Protocol):
    """What the failover manager needs from an engine (postgres: the instance managers' API;
    sqlserver: pyodbc and T-SQL; tests: an in-memory engine)."""

    def observe(self, pods: list[str], labels: dict[str, str | None]) -> list[Observation]: ...
    def fence(self, pod: str) -> None: ...
    def detach(self, pod: str) -> None: ...
    def promote(self, pod: str) -> None: ...
    def follow(self, pod: str, primary: str) -> None: ...
    def write_probe(self, pod: str) -> bool: ...


class DriverError(RuntimeError):
    """An action the engine refused or could not carry out; the pass stops there."""


@dataclass
class PassResult:
    decision: Decision
    observations: list[Observation]
    memory: Memory
    completed: FailoverRecord | None = None  # the failover record, when one finished in this pass
    events: list[Action] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    steps: list[str] = field(default_factory=list)   # what was done, each with its seconds: for the log

    def summary(self) -> str:
        """One line for the operator's log: the decision, why, and each step with its duration."""
        d = self.decision
        why = f" ({d.failover_reason} from {d.failover_from})" if d.failover_reason else ""
        done = f"; {', '.join(self.steps)}" if self.steps else ""
        record = (f"; recorded {self.completed.reason} {self.completed.from_} -> {self.completed.to}"
                  if self.completed else "")
        return f"{d.phase}/{d.reason}{why}{done}{record}"


def run_pass(driver: Driver, pods: list[str], labels: dict[str, str | None],
             set_label: Callable[[str, str | None], None], policy: Policy, memory: Memory,
             synchronous_members: int, now: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
             _after_fence: bool = False) -> PassResult:
    """Observe, decide, act. A pass that only fenced is followed at once by one more: the fence
    and detach calls return once the old primary is stopped and the standbys have stopped
    receiving, so positions can be compared now rather than a timer tick later."""
    observing = time.monotonic()
    observations = driver.observe(pods, labels)
    decision = decide(observations, policy, memory, now(), synchronous_members)
    observed_in = time.monotonic() - observing
    current = memory.current_primary or (decision.target_primary if decision.reason == "Bootstrapped" else None)
    result = PassResult(decision, observations, memory)
    if observed_in > 1:
        result.steps.append(f"observe {observed_in:.2f}s")
    promoted = None
    by_pod = {o.pod: o for o in observations}
    # re-pointing a standby is quick; bringing back the old primary is not (a pg_rewind, or a
    # fresh clone, even when it restarted as a standby after a crash): it waits until the new
    # primary has proved itself with a write, so it never lengthens the outage
    old = decision.failover_from or memory.failover_from
    slow = [a for a in decision.actions if a.kind == "follow" and (
        a.pod == old or (by_pod.get(a.pod) and by_pod[a.pod].role != "standby"))]
    quick = [a for a in decision.actions if a not in slow]
    for action in quick + [None] + slow:
        started = time.monotonic()
        if action is None:
            if (promoted or decision.completing) and not result.errors:
                probe = _complete(driver, decision, memory, current, now)
                if probe:
                    result.completed = probe
                result.steps.append(f"write probe on {current} {'acknowledged' if probe else 'not acknowledged'} "
                                    f"{time.monotonic() - started:.2f}s")
            continue
        try:
            if action.kind == "event":
                result.events.append(action)
            elif action.kind == "unlabel":
                set_label(action.pod, None)
                labels[action.pod] = None
            elif action.kind == "label":
                set_label(action.pod, action.role)
                labels[action.pod] = action.role
            elif action.kind == "fence":
                driver.fence(action.pod)
            elif action.kind == "detach":
                driver.detach(action.pod)
            elif action.kind == "promote":
                driver.promote(action.pod)
                promoted = current = action.pod
            elif action.kind == "follow":
                driver.follow(action.pod, action.primary)
        except DriverError as error:
            result.errors.append(f"{action.kind} {action.pod}: {error}")
            result.steps.append(f"{action.kind} {action.pod} failed {time.monotonic() - started:.2f}s")
            if action.kind in ("fence", "promote"):
                break  # never go on past a fence or a promotion that did not happen
            continue
        if action.kind != "event":
            result.steps.append(f"{action.kind} {action.pod} {time.monotonic() - started:.2f}s")
    if result.completed:
        result.memory = Memory(current_primary=current)
    else:
        result.memory = Memory(current_primary=current, unhealthy_since=decision.unhealthy_since,
                               failover_started_at=decision.failover_started_at,
                               failover_from=decision.failover_from, failover_reason=decision.failover_reason)
    if decision.reason == "Fencing" and not result.errors and not _after_fence:
        after = run_pass(driver, pods, labels, set_label, policy, result.memory, synchronous_members, now,
                         _after_fence=True)
        after.events[:0] = result.events
        after.steps[:0] = result.steps + [f"then ({after.decision.reason})"]
        return after
    return result


def _complete(driver: Driver, decision: Decision, memory: Memory, current: str | None, now) -> FailoverRecord | None:
    """The failover ends with the new primary's first write acknowledged by the quorum."""
    started = decision.failover_started_at
    if not started or not current or not driver.write_probe(current):
        return None
    done = now()
    lost = decision.unhealthy_since or started
    return FailoverRecord(
        from_=decision.failover_from, to=current, reason=decision.failover_reason,
        planned=decision.failover_reason == "PlannedSwitchover", data_loss=decision.data_loss or None,
        primary_lost_at=lost, started_at=started, completed_at=done,
        duration_seconds=round((done - started).total_seconds(), 3),
        outage_seconds=round((done - lost).total_seconds(), 3),
    )

"""What an instance should become when its manager starts (pure; tests/instance/test_plan.py).

The rule that keeps a shard safe: after the very first bootstrap, an instance never makes
itself primary. It follows the primary it finds among its peers (rewinding first if it was a
primary itself), or it waits as a standby with nobody upstream until the operator, which sees
every replica's position, promotes someone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Start = Literal["initdb", "basebackup", "rewind", "standby", "primary", "wait"]


@dataclass(frozen=True)
class Local:
    has_data: bool
    was_primary: bool = False        # no standby.signal: it ran as a primary last time


@dataclass(frozen=True)
class Peer:
    name: str
    reachable: bool
    role: str = "unknown"            # primary | standby | stopped | empty | unknown
    healthy: bool = False


@dataclass(frozen=True)
class StartPlan:
    action: Start
    upstream: str | None = None
    reason: str = ""


def plan_start(me: str, local: Local, peers: list[Peer], bootstrap_primary: str) -> StartPlan:
    primaries = [p for p in peers if p.reachable and p.healthy and p.role == "primary" and p.name != me]
    primary = primaries[0].name if len(primaries) == 1 else None
    if len(primaries) > 1:
        return StartPlan("wait", reason="more than one peer reports primary: waiting for the operator to fence")
    if not local.has_data:
        if primary:
            return StartPlan("basebackup", primary, f"cloning {primary}")
        everyone_empty = all(p.reachable and p.role == "empty" for p in peers if p.name != me)
        if me == bootstrap_primary and everyone_empty:
            return StartPlan("initdb", reason="first instance of a new shard")
        return StartPlan("wait", reason="no data and no primary to clone yet")
    if not [p for p in peers if p.name != me] and local.was_primary:
        return StartPlan("primary", reason="a single-replica shard: nobody else can be primary")
    if primary:
        if local.was_primary:
            return StartPlan("rewind", primary, f"was primary; {primary} is primary now: rewinding onto it")
        return StartPlan("standby", primary, f"following {primary}")
    return StartPlan("standby", None, "no primary among the peers: standby without upstream until the operator decides")

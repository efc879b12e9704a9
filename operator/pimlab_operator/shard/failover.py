"""The failover manager's decisions, for both engines: observations + policy -> actions. No I/O.

The operator is the external cluster manager of a Shard (SQL Server AG with CLUSTER_TYPE =
EXTERNAL, or PostgreSQL streaming replication). Each pass it observes every replica through the
engine's driver, calls `decide`, and carries out the returned actions in order. `decide` is
level-based: it looks only at what it observes now and at what status remembers (the current
primary, since when the primary has been unhealthy), so a pass interrupted half-way (an operator
restart) is simply decided again from the new observations.

The rules, each covered by tests/operator/test_failover.py:

* fail over only after the primary has been unhealthy for `unhealthyAfterSeconds`, and only when
  `failover.automatic`;
* fence first: the old primary loses its role label (the `-primary` Service drops it), is told to
  stop, and every standby stops following it (Detach) *before* positions are compared, so no
  replica can acknowledge another commit from the old primary while we choose;
* promote only a synchronous replica holding the highest position (PostgreSQL LSN, SQL Server
  sequence number) among the synchronous replicas, and only when enough of them answer that
  every acknowledged commit is on one of those observed: a commit needs `k` of the `n`
  synchronous replicas, so `n - k + 1` of them must be observed (the quorum rule);
* otherwise refuse with a reason, unless `allowDataLoss`, which promotes the most advanced
  replica that answers (and records that data may be lost);
* at most one primary: a second reachable primary is fenced; labels follow the decision;
* a planned switchover (`spec.primary` or the annotation) starts only when the target streams
  from the primary, goes through the same fencing, and promotes the target only if it holds the
  most advanced position; if it does not, the most advanced safe replica is promoted instead
  (never no primary at all), and the switchover is tried again once the target has caught up.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

Role = Literal["primary", "standby", "stopped", "empty", "unknown"]


@dataclass(frozen=True)
class Observation:
    """One replica as its driver saw it in this pass."""

    pod: str
    reachable: bool                  # the driver got an answer (the pod's instance manager / SQL endpoint)
    role: Role = "unknown"           # what the engine says it is
    healthy: bool = False            # the database accepts connections in its role
    position: int | None = None      # LSN (bytes) / SQL Server sequence number: WAL received and flushed
    synchronous: bool = False        # a member of the synchronous quorum (ANY k / SYNCHRONOUS_COMMIT)
    upstream: str | None = None      # the primary this standby is configured to follow
    streaming: bool = False          # its WAL receiver streams from `upstream` now
    pod_ready: bool = True           # the kubelet's view (readiness probe)
    labelled_role: str | None = None  # the pod's role label now
    timeline: int | None = None      # PostgreSQL timeline (informative)


@dataclass(frozen=True)
class Policy:
    automatic: bool = True
    unhealthy_after_seconds: float = 30
    allow_data_loss: bool = False
    synchronous_required: int = 1     # k: synchronous replicas a commit waits for
    planned_primary: str | None = None  # spec.primary or the switchover annotation


@dataclass(frozen=True)
class Memory:
    """What the last pass left in status."""

    current_primary: str | None = None
    unhealthy_since: datetime | None = None
    failover_started_at: datetime | None = None
    failover_from: str | None = None
    failover_reason: str | None = None


@dataclass(frozen=True)
class Action:
    """One step. kinds, in the order they may appear:
    unlabel (remove the role label), fence (stop/demote the database), detach (stop following),
    promote, follow (stream from `primary`), label (set role label), event (post an Event)."""

    kind: Literal["unlabel", "fence", "detach", "promote", "follow", "label", "event"]
    pod: str | None = None
    primary: str | None = None
    role: str | None = None
    reason: str | None = None
    message: str | None = None
    warning: bool = False


@dataclass
class Decision:
    actions: list[Action] = field(default_factory=list)
    phase: str = "Ready"
    reason: str = "Healthy"
    message: str = ""
    target_primary: str | None = None
    unhealthy_since: datetime | None = None
    failover_started_at: datetime | None = None
    failover_from: str | None = None
    failover_reason: str | None = None
    refused: bool = False
    data_loss: bool = False
    completing: bool = False          # the new primary is up: prove it with a write, then record the failover

    def kinds(self) -> list[tuple[str, str | None]]:
        return [(a.kind, a.pod) for a in self.actions if a.kind != "event"]


def quorum_needed(synchronous_members: int, required: int) -> int:
    """How many synchronous replicas must be observed to be sure the most advanced of them holds
    every acknowledged commit: each commit is on `required` of `synchronous_members`, so any
    `members - required + 1` of them include at least one holder of each commit."""
    if required <= 0:
        return synchronous_members + 1  # nothing is guaranteed anywhere: never "safe"
    return max(1, synchronous_members - required + 1)


def ordinal(pod: str) -> int:
    """A StatefulSet pod's ordinal (`shard-00-2` -> 2)."""
    tail = pod.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else 0


def choose_candidate(observations: list[Observation], policy: Policy, exclude: str | None,
                     members: int) -> tuple[Observation | None, str, str, bool]:
    """(the replica to promote, reason, message, data_loss). None with the refusal's reason."""
    standbys = [o for o in observations if o.pod != exclude and o.reachable and o.healthy
                and o.role == "standby" and o.position is not None]
    synchronous = [o for o in standbys if o.synchronous]
    needed = quorum_needed(members, policy.synchronous_required)

    def best(pool: list[Observation]) -> Observation:
        # highest position; on a tie the planned target, then the lowest ordinal
        return sorted(pool, key=lambda o: (-(o.position or 0), o.pod != policy.planned_primary,
                                           ordinal(o.pod)))[0]

    if synchronous and len(synchronous) >= needed:
        chosen = best(synchronous)
        return chosen, "MostAdvancedSynchronousReplica", (
            f"{chosen.pod} holds the highest position {chosen.position} of the {len(synchronous)} "
            f"synchronous replicas observed ({needed} needed)"), False
    if policy.synchronous_required <= 0:
        why = ("NoSynchronousReplica", "no replica commits synchronously (synchronousReplicas is 0): "
               "any promotion may lose acknowledged commits")
    elif not synchronous:
        why = ("NoSafeStandby", "no synchronous standby answers with its position")
    else:
        why = ("QuorumNotObserved",
               f"only {len(synchronous)} of {members} synchronous standbys answer; a commit waits for "
               f"{policy.synchronous_required} of them, so {needed} must answer to be sure the most "
               "advanced holds every acknowledged commit")
    if policy.allow_data_loss and standbys:
        chosen = best(standbys)
        return chosen, "DataLossAllowed", (f"{why[1]}; allowDataLoss is true: promoting {chosen.pod}, "
                                           f"the most advanced replica that answers"), True
    return None, why[0], why[1] + ("" if policy.allow_data_loss else
                                   "; refusing to promote (set spec.failover.allowDataLoss to force)"), False


def _label_actions(observations: list[Observation], primary: str) -> list[Action]:
    """Role labels that follow the engine: primary on `primary`, secondary on healthy standbys
    following it, none on anything else (stopped, rewinding, lost)."""
    actions = []
    for o in observations:
        if o.pod == primary:
            want = "primary"
        elif o.reachable and o.role == "standby" and o.healthy and o.upstream == primary and o.streaming:
            want = "secondary"
        else:
            want = None
        if want and o.labelled_role != want:
            actions.append(Action("label", o.pod, role=want))
        elif want is None and o.labelled_role:
            actions.append(Action("unlabel", o.pod))
    return actions


def _follow_actions(observations: list[Observation], primary: str) -> list[Action]:
    return [Action("follow", o.pod, primary=primary) for o in observations
            if o.pod != primary and o.reachable and o.role in ("standby", "stopped", "primary")
            and o.upstream != primary]


def _seconds(a: datetime, b: datetime) -> float:
    return (a - b).total_seconds()


def decide(observations: list[Observation], policy: Policy, memory: Memory, now: datetime,
           synchronous_members: int) -> Decision:
    """The whole decision for one pass. `synchronous_members` is n, the replicas (other than the
    primary) in the synchronous quorum; `policy.synchronous_required` is k."""
    by_pod = {o.pod: o for o in observations}
    primaries = [o for o in observations if o.reachable and o.role == "primary"]
    current = memory.current_primary

    # Bootstrap: nobody has been primary yet; the instance managers initialise the first one.
    if current is None:
        if len(primaries) == 1 and primaries[0].healthy:
            p = primaries[0].pod
            return Decision(_label_actions(observations, p) + _follow_actions(observations, p),
                            phase="Ready" if _all_following(observations, p) else "Bootstrapping",
                            reason="Bootstrapped", message=f"{p} initialised as primary", target_primary=p)
        return Decision(phase="Bootstrapping", reason="WaitingForFirstPrimary",
                        message="waiting for the first instance to initialise the database",
                        target_primary=policy.planned_primary or None)

    actions: list[Action] = []
    recorded = by_pod.get(current)
    healthy_primaries = [o for o in primaries if o.healthy]
    if not (recorded and recorded.reachable and recorded.role == "primary") and len(healthy_primaries) == 1:
        # The recorded primary is not primary any more and exactly one replica is: a promotion
        # whose status write was lost (an operator restart mid-pass). Adopt it, never fence it.
        current = healthy_primaries[0].pod
        memory = Memory(current, memory.unhealthy_since, memory.failover_started_at or now,
                        memory.failover_from or recorded and recorded.pod, memory.failover_reason or "PrimaryUnhealthy")
    # At most one primary: any reachable primary that is not the current one is fenced now.
    for extra in primaries:
        if extra.pod != current:
            actions += [Action("unlabel", extra.pod), Action("fence", extra.pod),
                        Action("event", extra.pod, reason="Fenced", warning=True,
                               message=f"{extra.pod} reports itself primary while {current} is: fenced")]
    primary = by_pod.get(current)
    primary_ok = primary is not None and primary.reachable and primary.role == "primary" and primary.healthy
    in_failover = memory.failover_started_at is not None

    if primary_ok and in_failover:
        actions += _follow_actions(observations, current) + _label_actions(observations, current)
        return Decision(actions, phase="FailingOver", reason="ConfirmingWrites",
                        message=f"{current} promoted; waiting for its first acknowledged write",
                        target_primary=current, unhealthy_since=memory.unhealthy_since,
                        failover_started_at=memory.failover_started_at, failover_from=memory.failover_from,
                        failover_reason=memory.failover_reason, completing=True)
    if primary_ok:
        target = policy.planned_primary
        if target and target != current and target in by_pod:
            return _switchover(observations, policy, memory, now, synchronous_members, actions, current, target)
        actions += _follow_actions(observations, current) + _label_actions(observations, current)
        healthy = _all_following(observations, current)
        return Decision(actions, phase="Ready" if healthy else "Degraded",
                        reason="Healthy" if healthy else "StandbysNotStreaming",
                        message=f"{current} is primary" + ("" if healthy else "; " + _lagging(observations, current)),
                        target_primary=current)

    # The primary is not healthy (or a failover is under way).
    since = memory.unhealthy_since or now
    if not in_failover:
        waited = _seconds(now, since)
        if waited < policy.unhealthy_after_seconds:
            return Decision(actions, phase="Degraded", reason="PrimaryUnhealthy", unhealthy_since=since,
                            message=f"{current} unhealthy for {waited:.0f}s; failing over after "
                                    f"{policy.unhealthy_after_seconds:.0f}s", target_primary=current)
        if not policy.automatic:
            return Decision(actions, phase="Degraded", reason="AutomaticFailoverDisabled", unhealthy_since=since,
                            message=f"{current} unhealthy for {waited:.0f}s and failover.automatic is false: "
                                    "set spec.primary to switch over by hand", target_primary=current, refused=True)
    reason = memory.failover_reason or "PrimaryUnhealthy"
    return _failover(observations, policy, memory, now, synchronous_members, actions, current, since, reason=reason,
                     planned_target=policy.planned_primary if reason == "PlannedSwitchover" else None)


def _all_following(observations: list[Observation], primary: str) -> bool:
    return all(o.pod == primary or (o.reachable and o.healthy and o.role == "standby" and o.upstream == primary
                                    and o.streaming) for o in observations)


def _lagging(observations: list[Observation], primary: str) -> str:
    return ", ".join(sorted(o.pod for o in observations if o.pod != primary and not (
        o.reachable and o.healthy and o.role == "standby" and o.upstream == primary and o.streaming))) + " not streaming"


def _fence_steps(observations: list[Observation], old: str) -> list[Action]:
    """Fence first: the Service drops the old primary, it is stopped, and nobody streams from it."""
    old_obs = next((o for o in observations if o.pod == old), None)
    steps = []
    if old_obs is None or old_obs.labelled_role:
        steps.append(Action("unlabel", old))
    if old_obs is not None and old_obs.reachable and old_obs.role == "primary":
        steps.append(Action("fence", old))
    steps += [Action("detach", o.pod) for o in observations
              if o.pod != old and o.reachable and o.role == "standby" and o.upstream == old]
    return steps


def _failover(observations, policy, memory, now, members, actions, old, since, reason, planned_target):
    started = memory.failover_started_at or now
    base = dict(unhealthy_since=since, failover_started_at=started, failover_from=old, failover_reason=reason)
    fence = _fence_steps(observations, old)
    if any(a.kind in ("fence", "detach") for a in fence):
        # positions are compared only once nothing can advance them any more: next pass
        events = [Action("event", old, reason="Fencing", warning=True,
                         message=f"fencing {old} before choosing a new primary ({reason})")]
        return Decision(actions + fence + events, phase="FailingOver", reason="Fencing",
                        message=f"fencing {old}: unlabel, stop, standbys detached", target_primary=planned_target, **base)
    chosen, why, message, loss = choose_candidate(observations, policy, old, members)
    if planned_target and chosen is not None and chosen.pod != planned_target:
        target = next((o for o in observations if o.pod == planned_target), None)
        if target is not None and target.position == chosen.position and target.synchronous:
            chosen = target
        else:
            # the old primary is fenced already: refusing now would leave the shard without a
            # primary for as long as the target lags. Promote the safe candidate instead; the
            # switchover is tried again (from it) once the target streams and has caught up.
            message = (f"{planned_target} is behind {chosen.pod} after fencing {old}: promoting {chosen.pod} "
                       f"instead (no data loss); the switchover to {planned_target} follows once it has caught up")
            actions = actions + [Action("event", planned_target, reason="SwitchoverTargetBehind", warning=True,
                                        message=message)]
    if chosen is None:
        return Decision(actions + fence + [Action("event", old, reason="FailoverRefused", warning=True, message=message)],
                        phase="Degraded", reason=why, message=message, target_primary=None, refused=True, **base)
    new = chosen.pod
    steps = fence + [Action("promote", new),
                     Action("event", new, reason="Promoted", warning=loss,
                            message=f"promoted {new} (from {old}, {reason}): {message}"),
                     Action("label", new, role="primary")]
    steps += [Action("follow", o.pod, primary=new) for o in observations
              if o.pod != new and o.reachable and o.role in ("standby", "stopped", "primary")]
    return Decision(actions + steps, phase="FailingOver", reason="Promoting", message=message,
                    target_primary=new, data_loss=loss, **base)


def _switchover(observations, policy, memory, now, members, actions, current, target):
    """Planned: same fencing, then promote the target once it holds the old primary's last position."""
    t = next(o for o in observations if o.pod == target)
    # streaming from the current primary: its clean stop then hands the target every last commit
    if not (t.reachable and t.healthy and t.role == "standby" and t.synchronous and t.streaming and t.upstream == current):
        message = f"switchover to {target} waits: it is not a healthy synchronous standby streaming from {current}"
        return Decision(actions, phase="Ready", reason="SwitchoverWaiting", message=message, target_primary=target)
    return _failover(observations, policy, memory, now, members, actions, current, None,
                     reason="PlannedSwitchover", planned_target=target)

"""Rolling updates that restart the primary last, after a switchover. No I/O.

The Shard's StatefulSet is `OnDelete`: the StatefulSet controller recreates a deleted pod from
the new template, and the operator chooses which pod to delete. Letting the controller roll the
pods itself would restart the primary in place, an outage of its restart (or an unplanned
failover when the restart outlasts `unhealthyAfterSeconds`). Instead, each pass:

* waits while a failover runs, while any pod is missing or leaving, and until every replica
  other than the one to restart serves in its role (primary healthy, standby streaming);
* restarts outdated standbys one at a time, highest ordinal first; an outdated pod that does
  not answer at all is restarted at once (a broken pod whose fix may be the new template), one
  that answers but does not stream yet (the old primary being re-pointed) is waited for;
* when only the primary is outdated, switches over to the most advanced updated synchronous
  standby (the failover manager's planned switchover: fence, compare positions, promote), and the
  old primary, now a standby, is restarted by the rule above;
* restarts the primary in place only when there is no standby to take over (one replica, or no
  synchronous standby: a switchover to an asynchronous one could lose commits).

While a rollout is under way, its switchover target replaces `spec.primary` and the switchover
annotation (`status.policy_of`): a primary pinned to an outdated pod would otherwise be switched
back to before it could be restarted. The pin applies again once every pod is updated.
"""

from __future__ import annotations

from dataclasses import dataclass

from pimlab_operator.objects import pod_ready
from pimlab_operator.shard.failover import Observation, ordinal

REVISION_LABEL = "controller-revision-hash"  # set by the StatefulSet controller on each pod


@dataclass(frozen=True)
class Replica:
    """One pod of the Shard as this pass sees it."""

    pod: str
    revision: str | None            # the pod's controller-revision-hash label
    serving: bool                   # primary: healthy; standby: streaming from the primary
    broken: bool = False            # nothing answers in the pod (its instance manager / SQL endpoint)
    leaving: bool = False           # deletionTimestamp set
    primary: bool = False
    candidate: bool = False         # a synchronous standby streaming from the primary
    position: int | None = None


@dataclass(frozen=True)
class Rollout:
    """What to do about the template in this pass, and what status says about it."""

    revision: str | None
    updated: int
    outdated: tuple[str, ...]
    reason: str                     # Pending, UpToDate, Paused, WaitingForReplicas, RestartingStandby,
                                    # SwitchingOver, RestartingPrimary
    message: str
    restart: str | None = None      # the pod to delete now
    switchover_to: str | None = None

    @property
    def in_progress(self) -> bool:
        return bool(self.outdated)


def plan(replicas: list[Replica], revision: str | None, wanted: int, paused: str | None = None,
         switching_to: str | None = None) -> Rollout:
    """The next step of the rollout to `revision` (the StatefulSet's updateRevision). `paused`:
    why the failover manager must not be disturbed now (a failover under way, an unhealthy
    primary). `switching_to`: the switchover target the previous pass chose, kept while it runs."""
    updated = sum(1 for r in replicas if r.revision == revision and not r.leaving)
    outdated = tuple(r.pod for r in sorted(replicas, key=lambda r: ordinal(r.pod)) if r.revision != revision)
    base = dict(revision=revision, updated=updated, outdated=outdated)
    if revision is None:
        return Rollout(None, 0, (), reason="Pending", message="the StatefulSet has no update revision yet")
    if not outdated:
        return Rollout(**base, reason="UpToDate", message=f"{updated}/{wanted} pods run revision {revision}")
    if paused:
        return Rollout(**base, reason="Paused", message=f"rolling update paused: {paused}", switchover_to=switching_to)
    leaving = [r.pod for r in replicas if r.leaving]
    present = {r.pod for r in replicas}
    if leaving or len(present) < wanted:
        return Rollout(**base, reason="WaitingForReplicas",
                       message=f"waiting for {', '.join(leaving) or f'{wanted - len(present)} missing pod(s)'} "
                               f"to be recreated; {updated}/{wanted} updated")

    def others_not_serving(pod: str) -> list[str]:
        return [r.pod for r in replicas if r.pod != pod and not r.serving]

    standbys = sorted((r for r in replicas if not r.primary and r.revision != revision),
                      key=lambda r: (not r.broken, -ordinal(r.pod)))
    if standbys:
        chosen = standbys[0]
        blocking = others_not_serving(chosen.pod) + ([] if chosen.serving else [chosen.pod])
        if not chosen.broken and blocking:
            return Rollout(**base, reason="WaitingForReplicas",
                           message=f"waiting for {', '.join(blocking)} to serve before restarting {chosen.pod}; "
                                   f"{updated}/{wanted} updated")
        why = "nothing answers in it" if chosen.broken else "every other replica serves"
        return Rollout(**base, reason="RestartingStandby", restart=chosen.pod,
                       message=f"restarting standby {chosen.pod} on revision {revision} ({why}); "
                               f"{updated}/{wanted} updated")
    primary = next(r for r in replicas if r.primary)
    blocking = others_not_serving(primary.pod)
    if blocking:
        return Rollout(**base, reason="WaitingForReplicas",
                       message=f"waiting for {', '.join(blocking)} to serve before updating the primary {primary.pod}")
    candidates = sorted((r for r in replicas if r.candidate and r.revision == revision),
                        key=lambda r: (-(r.position or 0), ordinal(r.pod)))
    if candidates:
        target = switching_to if switching_to in {c.pod for c in candidates} else candidates[0].pod
        return Rollout(**base, reason="SwitchingOver", switchover_to=target,
                       message=f"every standby runs revision {revision}: switching over from {primary.pod} to "
                               f"{target}, then {primary.pod} restarts as a standby")
    why = "it is the only replica" if wanted == 1 else "no synchronous standby can take over without losing commits"
    return Rollout(**base, reason="RestartingPrimary", restart=primary.pod,
                   message=f"restarting the primary {primary.pod} in place on revision {revision}: {why}")


def replicas_of(pods: list[dict], names: list[str], role_label: str, primary: str | None,
                observations: list[Observation] | None) -> list[Replica]:
    """The Shard's pods (leaving ones too) as the rollout sees them: through the failover
    manager's observations when a pass ran, else through the kubelet's readiness and the role
    labels (kwok nodes, SQL Server before its availability group exists)."""
    observed = {o.pod: o for o in observations or []}
    replicas = []
    for pod in sorted((p for p in pods if p["metadata"]["name"] in names), key=lambda p: ordinal(p["metadata"]["name"])):
        name, labels = pod["metadata"]["name"], pod["metadata"].get("labels") or {}
        base = dict(pod=name, revision=labels.get(REVISION_LABEL), leaving=bool(pod["metadata"].get("deletionTimestamp")))
        if observations is None:
            ready = pod_ready(pod)
            replicas.append(Replica(**base, serving=ready, broken=not ready, primary=labels.get(role_label) == "primary"))
            continue
        o = observed.get(name)
        if o is None or not o.reachable:
            replicas.append(Replica(**base, serving=False, broken=True, primary=name == primary))
        elif name == primary:
            replicas.append(Replica(**base, serving=o.healthy and o.role == "primary", primary=True, position=o.position))
        else:
            streaming = o.healthy and o.role == "standby" and o.upstream == primary and o.streaming
            replicas.append(Replica(**base, serving=streaming, candidate=streaming and o.synchronous,
                                    position=o.position))
    return replicas


def rollout_status(rollout: Rollout) -> dict:
    """status.rollingUpdate."""
    fields = {"revision": rollout.revision, "updatedReplicas": rollout.updated,
              "outdatedPods": list(rollout.outdated) or None, "reason": rollout.reason,
              "message": rollout.message[:1024], "switchoverTo": rollout.switchover_to}
    return {k: v for k, v in fields.items() if v is not None}

"""Rolling updates (shard/rollout.py): standbys one at a time, a switchover, the old primary
last; with the failover manager's decisions and the Shard's policy where they meet."""

from __future__ import annotations

from datetime import datetime, timezone

from pimlab_operator.shard import desired
from pimlab_operator.shard.failover import Memory, Observation, Policy, decide
from pimlab_operator.shard.model import ShardSpec
from pimlab_operator.shard.rollout import REVISION_LABEL, Replica, plan, replicas_of
from pimlab_operator.shard.status import policy_of, rollout_status

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)
P0, S1, S2 = "shard-00-0", "shard-00-1", "shard-00-2"
OLD, NEW = "shard-00-5d4f", "shard-00-7c9b"


def replica(pod, revision=OLD, primary=False, serving=True, **kw):
    return Replica(pod, revision, serving, primary=primary, candidate=kw.pop("candidate", not primary and serving), **kw)


def test_nothing_to_do_when_every_pod_runs_the_update_revision():
    step = plan([replica(P0, NEW, primary=True), replica(S1, NEW), replica(S2, NEW)], NEW, 3)
    assert (step.reason, step.restart, step.switchover_to, step.in_progress) == ("UpToDate", None, None, False)
    assert rollout_status(step).to_k8s() == {"revision": NEW, "updatedReplicas": 3, "reason": "UpToDate",
                                    "message": f"3/3 pods run revision {NEW}"}


def test_standbys_restart_one_at_a_time_highest_ordinal_first_and_only_when_the_others_serve():
    step = plan([replica(P0, primary=True), replica(S1), replica(S2)], NEW, 3)
    assert (step.reason, step.restart) == ("RestartingStandby", S2)
    assert step.outdated == (P0, S1, S2) and rollout_status(step).outdated_pods == [P0, S1, S2]
    # S2 was deleted: nothing more until it is back
    leaving = plan([replica(P0, primary=True), replica(S1), replica(S2, leaving=True, serving=False)], NEW, 3)
    assert (leaving.reason, leaving.restart) == ("WaitingForReplicas", None)
    missing = plan([replica(P0, primary=True), replica(S1)], NEW, 3)
    assert (missing.reason, missing.restart) == ("WaitingForReplicas", None) and "1 missing pod" in missing.message
    # back on the new revision but not streaming yet: S1 waits for it
    back = plan([replica(P0, primary=True), replica(S1), replica(S2, NEW, serving=False)], NEW, 3)
    assert (back.reason, back.restart) == ("WaitingForReplicas", None) and S2 in back.message
    streaming = plan([replica(P0, primary=True), replica(S1), replica(S2, NEW)], NEW, 3)
    assert (streaming.reason, streaming.restart, streaming.updated) == ("RestartingStandby", S1, 1)


def test_a_pod_where_nothing_answers_is_restarted_at_once_one_that_answers_is_waited_for():
    broken = plan([replica(P0, primary=True), replica(S1), replica(S2, NEW, serving=False),
                   replica("shard-00-3", serving=False, broken=True)], NEW, 4)
    assert (broken.reason, broken.restart) == ("RestartingStandby", "shard-00-3")
    assert "nothing answers" in broken.message
    # answering but not streaming (an old primary being re-pointed): waited for, never restarted mid-rewind
    rewinding = plan([replica(S1, NEW, primary=True), replica(S2, NEW), replica(P0, serving=False)], NEW, 3)
    assert (rewinding.reason, rewinding.restart) == ("WaitingForReplicas", None) and P0 in rewinding.message


def test_the_primary_is_switched_over_to_the_most_advanced_updated_synchronous_standby():
    step = plan([replica(P0, primary=True, position=900), replica(S1, NEW, position=880),
                 replica(S2, NEW, position=900)], NEW, 3)
    assert (step.reason, step.restart, step.switchover_to) == ("SwitchingOver", None, S2)
    assert rollout_status(step).switchover_to == S2
    # the target chosen by the previous pass is kept while it is still a candidate
    kept = plan([replica(P0, primary=True, position=900), replica(S1, NEW, position=900),
                 replica(S2, NEW, position=880)], NEW, 3, switching_to=S2)
    assert kept.switchover_to == S2
    # not while a standby does not serve
    waiting = plan([replica(P0, primary=True), replica(S1, NEW), replica(S2, NEW, serving=False)], NEW, 3)
    assert (waiting.reason, waiting.switchover_to) == ("WaitingForReplicas", None)


def test_the_primary_restarts_in_place_only_when_no_standby_can_take_over():
    alone = plan([replica(P0, primary=True)], NEW, 1)
    assert (alone.reason, alone.restart) == ("RestartingPrimary", P0) and "only replica" in alone.message
    asynchronous = plan([replica(P0, primary=True), replica(S1, NEW, candidate=False)], NEW, 2)
    assert (asynchronous.reason, asynchronous.restart) == ("RestartingPrimary", P0)
    assert "no synchronous standby" in asynchronous.message


def test_a_failover_or_an_unhealthy_primary_pauses_the_rollout_and_keeps_its_target():
    step = plan([replica(P0, primary=True), replica(S1, NEW), replica(S2, NEW)], NEW, 3,
                paused="the shard is FailingOver (Fencing)", switching_to=S2)
    assert (step.reason, step.restart, step.switchover_to) == ("Paused", None, S2)
    assert step.message == "rolling update paused: the shard is FailingOver (Fencing)"


def test_replicas_are_judged_by_the_failover_managers_observations():
    pods = [{"metadata": {"name": name, "labels": {REVISION_LABEL: rev}}}
            for name, rev in ((P0, OLD), (S1, NEW), (S2, NEW), ("other-0", OLD))]
    observations = [Observation(P0, True, "primary", True, 900),
                    Observation(S1, True, "standby", True, 900, True, P0, True),
                    Observation(S2, True, "standby", True, 800, False, P0, True)]  # streaming, not synchronous
    by_pod = {r.pod: r for r in replicas_of(pods, [P0, S1, S2], desired.ROLE_LABEL, P0, observations)}
    assert set(by_pod) == {P0, S1, S2}
    assert by_pod[P0].primary and by_pod[P0].serving and by_pod[P0].revision == OLD
    assert by_pod[S1].candidate and not by_pod[S2].candidate and by_pod[S2].serving
    # no observation at all: the pod is broken; no pass ran: the kubelet's readiness and the role label
    by_pod = {r.pod: r for r in replicas_of(pods, [P0, S1, S2], desired.ROLE_LABEL, P0, observations[:2])}
    assert by_pod[S2].broken and not by_pod[S2].serving
    kubelet = [{"metadata": {"name": P0, "labels": {REVISION_LABEL: OLD, desired.ROLE_LABEL: "primary"}},
                "status": {"conditions": [{"type": "Ready", "status": "True"}]}}]
    (only,) = replicas_of(kubelet, [P0], desired.ROLE_LABEL, None, None)
    assert only.primary and only.serving and not only.broken and not only.candidate


def _shard(primary_pin: str | None, rolling: dict | None) -> tuple[dict, ShardSpec]:
    spec = {"engine": "postgres", "ordinal": 0, "slots": {"start": 0, "end": 1023}, "replicas": 3}
    if primary_pin:
        spec["primary"] = primary_pin
    body = {"metadata": {"name": "shard-00", "namespace": "pim", "annotations": {}}, "spec": spec,
            "status": {"rollingUpdate": rolling} if rolling else {}}
    return body, ShardSpec.model_validate(spec)


def test_the_rollouts_switchover_replaces_a_pinned_primary_until_every_pod_is_updated():
    """spec.primary pinned to the outdated primary would switch back to it before it could be
    restarted; during the rollout the rollout's target (or none) is the planned primary."""
    body, spec = _shard(P0, {"outdatedPods": [P0], "reason": "SwitchingOver", "switchoverTo": S2})
    policy = policy_of(body, spec)
    assert policy.planned_primary == S2
    observations = [Observation(P0, True, "primary", True, 900, labelled_role="primary"),
                    Observation(S1, True, "standby", True, 900, True, P0, True, labelled_role="secondary"),
                    Observation(S2, True, "standby", True, 900, True, P0, True, labelled_role="secondary")]
    decision = decide(observations, policy, Memory(current_primary=P0), T0, 2)
    assert (decision.phase, decision.reason, decision.failover_reason) == ("FailingOver", "Fencing", "PlannedSwitchover")
    # the old primary, now an outdated standby being restarted: no switchover back to the pin yet
    body, spec = _shard(P0, {"outdatedPods": [P0], "reason": "WaitingForReplicas"})
    assert policy_of(body, spec).planned_primary is None
    # every pod updated: the pin applies again (the manager switches back once P0 streams)
    body, spec = _shard(P0, {"reason": "UpToDate", "updatedReplicas": 3})
    assert policy_of(body, spec) == Policy(synchronous_required=1, planned_primary=P0)


def test_a_whole_rollout_in_order_with_the_failover_manager():
    """Pass by pass on a simulated shard: S2, S1, a switchover to the most advanced updated
    standby, then the old primary; never two pods down at once, the primary never restarted."""
    revisions = {P0: OLD, S1: OLD, S2: OLD}
    positions = {P0: 1000, S1: 990, S2: 1000}
    primary, down, restarted, switched, previous = P0, set(), [], [], None
    for _ in range(20):
        replicas = [replica(pod, revisions[pod], primary=pod == primary, serving=pod not in down,
                            position=positions[pod]) for pod in revisions]
        step = plan(replicas, NEW, 3, switching_to=previous)
        previous = step.switchover_to
        down.clear()  # a restarted pod serves again by the next pass
        if step.restart:
            assert step.restart != primary, "the primary restarted in place"
            restarted.append(step.restart)
            revisions[step.restart], down = NEW, {step.restart}
        elif step.switchover_to:
            switched.append((primary, step.switchover_to))
            primary = step.switchover_to
        elif step.reason == "UpToDate":
            break
    assert restarted == [S2, S1, P0] and switched == [(P0, S2)] and step.reason == "UpToDate"

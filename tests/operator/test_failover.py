"""Every rule of the failover manager (shard/failover.py), on observations alone."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from pimlab_operator.shard.failover import Memory, Observation, Policy, decide, quorum_needed

T0 = datetime(2026, 11, 30, 12, 0, tzinfo=timezone.utc)
P0, S1, S2 = "shard-00-0", "shard-00-1", "shard-00-2"


def primary(pod=P0, **kw):
    return Observation(pod, True, "primary", True, kw.pop("position", 1000),
                       labelled_role=kw.pop("labelled_role", "primary"), **kw)


def standby(pod, position=1000, upstream=P0, synchronous=True, streaming=True, **kw):
    return Observation(pod, True, "standby", True, position, synchronous, upstream, streaming,
                       labelled_role=kw.pop("labelled_role", "secondary"), **kw)


def lost(pod=P0):
    return Observation(pod, False, labelled_role="primary")


def run(observations, policy=Policy(), memory=Memory(current_primary=P0), now=T0, members=2):
    return decide(observations, policy, memory, now, members)


def test_healthy_shard_needs_nothing():
    d = run([primary(), standby(S1), standby(S2)])
    assert d.kinds() == [] and d.phase == "Ready" and d.target_primary == P0 and not d.refused


def test_quorum_rule():
    assert quorum_needed(2, 1) == 2      # ANY 1 of 2: both must answer
    assert quorum_needed(2, 2) == 1      # both acknowledge every commit: either one is enough
    assert quorum_needed(1, 1) == 1
    assert quorum_needed(4, 2) == 3
    assert quorum_needed(2, 0) == 3      # asynchronous: never enough


def test_no_failover_before_unhealthy_after_seconds():
    d = run([lost(), standby(S1), standby(S2)])
    assert d.kinds() == [] and d.phase == "Degraded" and d.reason == "PrimaryUnhealthy" and d.unhealthy_since == T0
    later = run([lost(), standby(S1), standby(S2)], memory=Memory(P0, unhealthy_since=T0),
                now=T0 + timedelta(seconds=29))
    assert later.kinds() == [] and later.unhealthy_since == T0


def test_fence_first_then_promote_the_most_advanced_synchronous_standby():
    memory = Memory(P0, unhealthy_since=T0)
    now = T0 + timedelta(seconds=31)
    # pass 1: the standbys still follow the lost primary: unlabel it and detach them, choose nothing yet
    d = run([lost(), standby(S1, 900), standby(S2, 950)], memory=memory, now=now)
    assert d.kinds() == [("unlabel", P0), ("detach", S1), ("detach", S2)]
    assert d.phase == "FailingOver" and d.reason == "Fencing" and d.failover_started_at == now
    # pass 2: detached; S2 is further ahead
    memory = Memory(P0, unhealthy_since=T0, failover_started_at=now, failover_from=P0, failover_reason="PrimaryUnhealthy")
    detached = [Observation(P0, False), standby(S1, 900, upstream=None, streaming=False),
                standby(S2, 950, upstream=None, streaming=False)]
    d = run(detached, memory=memory, now=now + timedelta(seconds=1))
    assert d.kinds() == [("promote", S2), ("label", S2), ("follow", S1)]
    assert d.target_primary == S2 and not d.data_loss and d.failover_started_at == now
    assert any(a.kind == "event" and a.reason == "Promoted" for a in d.actions)


def test_a_reachable_old_primary_is_fenced_before_anything_is_promoted():
    sick = Observation(P0, True, "primary", False, 1000, labelled_role="primary")
    d = run([sick, standby(S1), standby(S2)], memory=Memory(P0, unhealthy_since=T0), now=T0 + timedelta(seconds=60))
    kinds = d.kinds()
    assert kinds[:2] == [("unlabel", P0), ("fence", P0)] and ("promote", S1) not in kinds
    assert kinds.index(("fence", P0)) < kinds.index(("detach", S1))


def test_an_asynchronous_replica_is_never_promoted_even_if_ahead():
    memory = Memory(P0, unhealthy_since=T0, failover_started_at=T0)
    obs = [Observation(P0, False), standby(S1, 900, upstream=None, streaming=False),
           standby(S2, 999, upstream=None, streaming=False, synchronous=False)]
    d = run(obs, policy=Policy(synchronous_required=1), memory=memory, members=1, now=T0 + timedelta(seconds=40))
    assert ("promote", S1) in d.kinds()


def test_refused_without_the_quorum_unless_data_loss_is_allowed():
    memory = Memory(P0, unhealthy_since=T0, failover_started_at=T0)
    obs = [Observation(P0, False), standby(S1, 900, upstream=None, streaming=False), Observation(S2, False)]
    d = run(obs, memory=memory, now=T0 + timedelta(seconds=40))
    assert d.refused and d.reason == "QuorumNotObserved" and "promote" not in [k for k, _ in d.kinds()]
    assert "allowDataLoss" in d.message and d.phase == "Degraded"
    assert any(a.kind == "event" and a.reason == "FailoverRefused" for a in d.actions)
    forced = run(obs, policy=Policy(allow_data_loss=True), memory=memory, now=T0 + timedelta(seconds=40))
    assert ("promote", S1) in forced.kinds() and forced.data_loss and forced.reason == "Promoting"


def test_refused_when_no_standby_answers():
    memory = Memory(P0, unhealthy_since=T0, failover_started_at=T0)
    d = run([Observation(P0, False), Observation(S1, False), Observation(S2, False)], memory=memory,
            now=T0 + timedelta(seconds=40))
    assert d.refused and d.reason == "NoSafeStandby"


def test_asynchronous_configuration_never_promotes_without_allow_data_loss():
    memory = Memory(P0, unhealthy_since=T0, failover_started_at=T0)
    obs = [Observation(P0, False), standby(S1, 900, upstream=None, streaming=False, synchronous=False)]
    d = run(obs, policy=Policy(synchronous_required=0), memory=memory, members=0, now=T0 + timedelta(seconds=40))
    assert d.refused and d.reason == "NoSynchronousReplica"


def test_manual_mode_refuses_with_a_reason():
    d = run([lost(), standby(S1), standby(S2)], policy=Policy(automatic=False),
            memory=Memory(P0, unhealthy_since=T0), now=T0 + timedelta(seconds=31))
    assert d.refused and d.reason == "AutomaticFailoverDisabled" and d.kinds() == []


def test_at_most_one_primary_a_second_one_is_fenced():
    rogue = Observation(S1, True, "primary", True, 1200, labelled_role="primary")
    d = run([primary(), rogue, standby(S2)])
    assert d.kinds()[:2] == [("unlabel", S1), ("fence", S1)]
    assert ("label", S1) not in d.kinds()
    assert any(a.kind == "event" and a.reason == "Fenced" and a.pod == S1 for a in d.actions)


def test_labels_follow_the_engine():
    behind = Observation(S2, True, "standby", True, 10, True, P0, False, labelled_role="secondary")
    new = standby(S1, labelled_role=None)
    d = run([primary(), new, behind])
    assert ("label", S1) in d.kinds() and ("unlabel", S2) in d.kinds()
    assert d.phase == "Degraded" and d.reason == "StandbysNotStreaming" and S2 in d.message


def test_standbys_follow_the_primary_and_a_returning_old_primary_is_repointed():
    returning = Observation(S2, True, "stopped", False, 700, labelled_role=None)
    d = run([primary(S1, labelled_role="primary"), returning, standby(P0, upstream=None, streaming=False)],
            memory=Memory(S1))
    assert ("follow", S2) in d.kinds() and ("follow", P0) in d.kinds()


def test_completing_pass_waits_for_the_first_write():
    memory = Memory(S1, unhealthy_since=T0, failover_started_at=T0, failover_from=P0, failover_reason="PrimaryUnhealthy")
    d = run([Observation(P0, False), primary(S1), standby(S2, upstream=S1)], memory=memory)
    assert d.completing and d.phase == "FailingOver" and d.failover_from == P0 and d.target_primary == S1


def test_planned_switchover_fences_then_promotes_the_caught_up_target():
    policy = Policy(planned_primary=S2)
    d = run([primary(), standby(S1), standby(S2)], policy=policy)
    assert d.kinds()[:2] == [("unlabel", P0), ("fence", P0)] and d.failover_reason == "PlannedSwitchover"
    memory = Memory(P0, failover_started_at=T0, failover_from=P0, failover_reason="PlannedSwitchover")
    stopped = Observation(P0, True, "stopped", False, 1000, labelled_role=None)
    obs = [stopped, standby(S1, 1000, upstream=None, streaming=False), standby(S2, 1000, upstream=None, streaming=False)]
    d = run(obs, policy=policy, memory=memory)
    assert d.kinds()[0] == ("promote", S2) and ("follow", P0) in d.kinds() and ("follow", S1) in d.kinds()
    # the target fell behind after the fence: never leave the shard without a primary; promote
    # the safe candidate, say so, and switch over again later
    behind = [stopped, standby(S1, 1000, upstream=None, streaming=False), standby(S2, 990, upstream=None, streaming=False)]
    d = run(behind, policy=policy, memory=memory)
    assert not d.refused and d.kinds()[0] == ("promote", S1)
    assert [a.reason for a in d.actions if a.kind == "event"][0] == "SwitchoverTargetBehind"


def test_switchover_waits_for_a_healthy_synchronous_target_streaming_from_the_primary():
    d = run([primary(), standby(S1), standby(S2, synchronous=False)], policy=Policy(planned_primary=S2))
    assert d.kinds() == [] and d.reason == "SwitchoverWaiting"
    d = run([primary(), standby(S1), standby(S2, upstream=None, streaming=False)], policy=Policy(planned_primary=S2))
    assert d.kinds() == [] and d.reason == "SwitchoverWaiting"


def test_bootstrap_labels_the_first_primary():
    obs = [primary(labelled_role=None), standby(S1, labelled_role=None), Observation(S2, True, "empty")]
    d = decide(obs, Policy(), Memory(), T0, 2)
    assert ("label", P0) in d.kinds() and ("label", S1) in d.kinds() and d.phase == "Bootstrapping"
    assert decide([Observation(P0, False)], Policy(), Memory(), T0, 2).reason == "WaitingForFirstPrimary"


def test_a_promotion_whose_status_was_lost_is_adopted_not_fenced():
    memory = Memory(P0, unhealthy_since=T0, failover_started_at=T0, failover_from=P0, failover_reason="PrimaryUnhealthy")
    d = run([Observation(P0, False), primary(S1, labelled_role=None), standby(S2, upstream=S1)], memory=memory)
    assert ("fence", S1) not in d.kinds() and d.completing and d.target_primary == S1 and d.failover_from == P0
    assert ("label", S1) in d.kinds()

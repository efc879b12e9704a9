"""What an instance becomes at start (pimlab/instance/plan.py): never a primary by itself after
the first bootstrap."""

from __future__ import annotations

from pimlab.instance.plan import Local, Peer, plan_start

ME, A, B = "shard-00-0", "shard-00-1", "shard-00-2"


def test_first_instance_initialises_only_when_every_peer_answers_empty():
    empty = [Peer(A, True, "empty"), Peer(B, True, "empty")]
    assert plan_start(ME, Local(False), empty, ME).action == "initdb"
    assert plan_start(A, Local(False), [Peer(ME, True, "empty"), Peer(B, True, "empty")], ME).action == "wait"
    assert plan_start(ME, Local(False), [Peer(A, False), Peer(B, True, "empty")], ME).action == "wait"
    assert plan_start(ME, Local(False), [Peer(A, True, "stopped"), Peer(B, True, "empty")], ME).action == "wait"


def test_an_empty_instance_clones_the_primary():
    plan = plan_start(B, Local(False), [Peer(ME, True, "primary", True), Peer(A, True, "standby", True)], ME)
    assert (plan.action, plan.upstream) == ("basebackup", ME)


def test_a_returning_primary_rewinds_onto_the_new_one():
    plan = plan_start(ME, Local(True, was_primary=True), [Peer(A, True, "primary", True), Peer(B, True, "standby", True)], ME)
    assert (plan.action, plan.upstream) == ("rewind", A)


def test_a_standby_follows_and_nobody_promotes_itself():
    assert plan_start(B, Local(True), [Peer(ME, True, "primary", True), Peer(A, False)], ME).action == "standby"
    alone = plan_start(ME, Local(True, was_primary=True), [Peer(A, False), Peer(B, False)], ME)
    assert (alone.action, alone.upstream) == ("standby", None)


def test_two_primaries_among_the_peers_means_wait():
    peers = [Peer(A, True, "primary", True), Peer(B, True, "primary", True)]
    assert plan_start(ME, Local(True), peers, ME).action == "wait"


def test_a_single_replica_shard_restarts_as_primary():
    assert plan_start(ME, Local(True, was_primary=True), [], ME).action == "primary"

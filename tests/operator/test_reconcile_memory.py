"""The operator's memory (`reconcile.ReconcileMemory`) keeps nothing of an object once it is
deleted: its reconcile lock, back-offs, apply and prune caches, resync task, failover pass lock
and last logged decision, and its children's seen versions."""

from __future__ import annotations

import asyncio
import copy
from types import SimpleNamespace

import pytest
from cr_samples import sample

from pimlab_operator import kube, reconcile, resync
from pimlab_operator.config import load_settings
from pimlab_operator.reconcile import ChildKind, Context, Kind, ReconcileMemory, Resync
from pimlab_operator.shard.model import Shard, ShardStatus

CONFIG_MAP = ChildKind("v1", "ConfigMap")


class Apiserver:
    """What the reconcile loop asks of the apiserver, answered from a dict of stored objects."""

    def __init__(self, shard: dict):
        self.objects = {("Shard", shard["metadata"]["name"]): shard}
        self.version = 1

    def _stored(self, obj: dict) -> dict:
        self.version += 1
        stored = copy.deepcopy(obj)
        stored["metadata"]["resourceVersion"] = str(self.version)
        self.objects[(obj["kind"], obj["metadata"]["name"])] = stored
        return copy.deepcopy(stored)

    def get(self, api_version, kind, name, namespace):
        found = self.objects.get((kind, name))
        return copy.deepcopy(found) if found else None

    def apply(self, manifest, dry_run=False, field_manager=kube.FIELD_MANAGER):
        return self._stored(manifest)

    def list_objects(self, api_version, kind, namespace, label_selector=""):
        return [copy.deepcopy(o) for (k, _), o in self.objects.items() if k == kind]

    def apply_status(self, body, status):
        return self._stored({**self.objects[(body["kind"], body["metadata"]["name"])], "status": status})

    def post_event(self, body, type_, reason, message):
        pass


def _step(body: dict, spec) -> None:
    """A Shard's bookkeeping without its databases: one child, a status, a failover pass."""
    memory = reconcile.context().memory
    name = body["metadata"]["name"]
    child = {"apiVersion": "v1", "kind": "ConfigMap", "data": {"replicas": str(spec.replicas)},
             "metadata": {"name": f"{name}-config", "namespace": body["metadata"]["namespace"],
                          "ownerReferences": [{"uid": body["metadata"]["uid"]}]}}
    reconcile.apply_children(body, [child], prune=(CONFIG_MAP,))
    with memory.failover_pass_lock(body["metadata"]["uid"]):
        memory.last_said[body["metadata"]["uid"]] = ("Ready", "Healthy")
    reconcile.write_status(body, ShardStatus(phase="Ready"), [])


class Stopped:
    """kopf's flag that stops a daemon."""

    def __init__(self):
        self.event = asyncio.Event()

    def __bool__(self) -> bool:
        return self.event.is_set()

    async def wait(self, timeout: float | None = None) -> bool:
        try:
            await asyncio.wait_for(self.event.wait(), timeout)
        except asyncio.TimeoutError:
            pass
        return bool(self)


@pytest.fixture
def apiserver(monkeypatch):
    shard = sample("Shard", "shard-00")
    shard.update(apiVersion="pim-sre.lab/v1alpha1", kind="Shard")
    shard["metadata"].update(namespace="lab", resourceVersion="1")
    server = Apiserver(shard)
    for name in ("get", "apply", "list_objects", "apply_status", "post_event"):
        monkeypatch.setattr(kube, name, getattr(server, name))
    return server


def test_a_deleted_object_leaves_nothing_in_the_memory(apiserver):
    ctx = Context(load_settings({}), ReconcileMemory())
    memory = ctx.memory
    kind = Kind(Shard, _step, Resync(20), children=(CONFIG_MAP,))
    body = apiserver.get(None, "Shard", "shard-00", "lab")
    uid, key = body["metadata"]["uid"], ("Shard", "lab", "shard-00")

    async def resync_task_while(action):
        stopped = Stopped()
        task = asyncio.ensure_future(resync.daemon(ctx, kind)(body=body, stopped=stopped,
                                                              memo=SimpleNamespace(executor=None), logger=None))
        await asyncio.sleep(0.05)
        action()
        stopped.event.set()  # kopf stops an object's daemon when the object is deleted
        await task

    def reconcile_and_watch():
        reconcile.run(ctx, kind, body, "create")
        config_map = apiserver.get("v1", "ConfigMap", "shard-00-config", "lab")
        reconcile.child_seen(memory, "ADDED", config_map, "ConfigMap")
        assert key in memory.tasks  # the resync task runs while the object lives

    asyncio.run(resync_task_while(reconcile_and_watch))
    stored = apiserver.objects[("Shard", "shard-00")]
    stored["spec"]["replicas"], stored["metadata"]["generation"] = "many", 2
    reconcile.run(ctx, kind, body, "update")  # an invalid spec: backed off, remembered
    per_object = {"locks": key, "invalid": key, "quiet": key, "applied_versions": uid,
                  "pruned_against": uid, "failover_passes": uid, "last_said": uid}
    assert all(entry in getattr(memory, name) for name, entry in per_object.items())
    assert memory.seen_versions and not memory.tasks

    config_map = apiserver.objects.pop(("ConfigMap", "shard-00-config"))
    del apiserver.objects[("Shard", "shard-00")]
    reconcile.run(ctx, kind, body, "child-deleted:ConfigMap")  # reads it fresh: gone
    reconcile.child_seen(memory, "DELETED", config_map, "ConfigMap")  # its child's watch event

    assert {name: entry for name, entry in per_object.items() if entry in getattr(memory, name)} == {}
    assert not memory.seen_versions and not memory.queued and not memory.tasks

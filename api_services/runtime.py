"""The per-process runtime: settings, shard map watcher, engines, authenticator, rate limiter."""

from __future__ import annotations

import threading
import time

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from api_services.auth import Authenticator
from api_services.config import Settings
from api_services.engines import Engines
from api_services.errors import NotFound, RateLimited
from api_services.rate_limit import TokenBuckets
from api_services.refusals import RefusalAuditor
from api_services.sharding import ShardMapWatcher, ensure_embedded_map, slot_in_id, slot_of
from api_services.telemetry import RATE_LIMITED, SHARD_MAP_VERSION, WORKER_UP, current_context


class WorkerHealth:
    """What each background worker last saw on each shard: ok, or failing since when and why."""

    def __init__(self):
        self._lock = threading.Lock()
        self._state: dict[tuple[str, str], tuple[bool, str, float]] = {}

    def ok(self, worker: str, shard: str) -> None:
        with self._lock:
            self._state[(worker, shard)] = (True, "", 0.0)
        WORKER_UP.labels(worker, shard).set(1)

    def failed(self, worker: str, shard: str, reason: str) -> None:
        with self._lock:
            prev = self._state.get((worker, shard))
            since = prev[2] if prev and not prev[0] else time.time()
            self._state[(worker, shard)] = (False, reason, since)
        WORKER_UP.labels(worker, shard).set(0)

    def forget(self, worker: str, shard: str) -> None:
        with self._lock:
            self._state.pop((worker, shard), None)
        try:
            WORKER_UP.remove(worker, shard)
        except KeyError:
            pass

    def snapshot(self) -> dict[tuple[str, str], tuple[bool, str, float]]:
        with self._lock:
            return dict(self._state)


class Runtime:
    def __init__(self, settings: Settings, service: str, with_db: bool = True):
        self.settings = settings
        self.service = service
        if not settings.shard_map_explicit:
            ensure_embedded_map(settings.shard_map_file, settings.data_dir, settings.shard_count)
        self.engines = Engines(settings.credentials_root, settings.sqlite_synchronous,
                               acquire_seconds=settings.shard_acquire_seconds,
                               write_timeout=settings.db_write_timeout_seconds,
                               group_commit=settings.group_commit) if with_db else None
        self.watcher = ShardMapWatcher(settings.shard_map_file, on_change=self._map_changed)
        self._map_changed(self.watcher.current)
        self.auth = Authenticator(settings)
        self.limiter = TokenBuckets(settings.rate_limit_rps, settings.rate_limit_burst) \
            if service in ("gateway", "all") else None
        self.workers: list = []
        self.worker_health = WorkerHealth()
        self.refusals = RefusalAuditor(self)

    def _map_changed(self, shard_map) -> None:
        if self.engines is not None:
            self.engines.sync(shard_map)
        SHARD_MAP_VERSION.set(shard_map.version)

    @property
    def shard_map(self):
        return self.watcher.get()

    async def fresh_map(self) -> None:
        """For async endpoints: a due map check (a stat, and on a change engine rebuilds that may
        connect to a server) runs on a threadpool thread, never on the event loop."""
        if self.watcher.due():
            await run_in_threadpool(self.watcher.get)

    def shard_names(self) -> list[str]:
        return [s.name for s in self.shard_map.shards]

    def route_patient(self, patient_id: str) -> tuple[str, int]:
        """The shard and slot owning a patient; also tags the request for logs and metrics."""
        smap = self.shard_map
        slot = slot_of(patient_id, smap.slot_count)
        shard = smap.shard_for_slot(slot).name
        current_context().shard = shard
        return shard, slot

    def route_id(self, entity_id: str, what: str) -> tuple[str, int]:
        smap = self.shard_map
        slot = slot_in_id(entity_id)
        if slot is None or slot >= smap.slot_count:
            raise NotFound(f"{what} not found", f"{what}_not_found")
        shard = smap.shard_for_slot(slot).name
        current_context().shard = shard
        return shard, slot

    def idempotency_home(self, user_id: str, key_digest: str) -> str:
        """The shard that records a caller's Idempotency-Key, whatever shard its write lands on."""
        smap = self.shard_map
        return smap.shard_for_slot(slot_of(f"{user_id}\x00{key_digest}", smap.slot_count)).name

    def reference_shard(self) -> str:
        """Reference data is on every shard: the first shard whose store is up serves it."""
        names = self.shard_names()
        shard = next((n for n in names if self.engines is None or self.engines.failure(n) is None), names[0])
        current_context().shard = shard
        return shard

    def rate_limit(self, user_id: str, persona: str) -> None:
        if self.limiter is None:
            return
        wait = self.limiter.take(user_id)
        if wait > 0:
            RATE_LIMITED.labels(persona).inc()
            raise RateLimited("too many requests", headers={"Retry-After": str(max(1, round(wait)))})

    def write_engine(self, shard: str):
        return self.engines.write(shard)


def runtime(request: Request) -> Runtime:
    return request.app.state.runtime

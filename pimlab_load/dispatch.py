"""The open-model dispatcher: each arrival goes out at its intended time, whatever earlier
requests are doing.

One scheduler coroutine walks this pod's share of the schedule and starts a task per arrival
when it is due; it never waits for responses. Latency is measured from the intended start (so
a stalled server shows in every arrival it delayed: no coordinated omission), service time from
the last attempt's send, schedule lag from the intended start to the first send. A request that
finds `maxInFlight` requests in flight is dropped and counted, never queued. A journey's later
steps are intended at the previous response plus the think time. SIGTERM (a deleted Job) stops
the schedule, lets requests in flight finish within the client timeout and ends with a partial
summary. Every request carries a W3C traceparent with a fresh trace id (the slowest request's is
kept); with spec.ledger every write's answer goes into the `WriteLedger`, read back after the
load (`verify`).
"""

from __future__ import annotations

import asyncio
import bisect
import gc
import json
import logging
import random
import signal
import time

import aiohttp
from yarl import URL

from api_services.auth import issue_dev_token
from api_services.config import load_settings
from api_services.gateway import route_label
from api_services.sharding import slot_in_id, slot_of
from pimlab_load.config import EngineConfig
from pimlab_load.journeys import Abort, Journeys, PersonaPlan, Population, arrival_rng, draw
from pimlab_load.ledger import LedgerResult, Slowest, WriteLedger, written
from pimlab_load.metrics import Metrics
from pimlab_load.report import Recorder
from pimlab_load.schedule import share
from pimlab_load.verify import read_back

log = logging.getLogger("pimlab_load")
#: Statuses worth a client retry.
RETRYABLE = frozenset({429, 500, 502, 503, 504})
#: Outcomes of a write that count towards a shard's write outage (a 429 is the client's own).
OUTAGE = frozenset({"timeout", "error", 500, 502, 503, 504})
#: Every timestamp: monotonic with sub-microsecond steps (uvloop's loop.time() has 1 ms steps).
now = time.monotonic
#: Tokens are minted for an hour and renewed after 50 minutes.
TOKEN_TTL, TOKEN_RENEW = 3600, 3000


class Tokens:
    """Development-issuer tokens (the same issuer as `pimlab token`), cached per (role, user)."""

    def __init__(self):
        self.settings = load_settings()
        self.cache: dict[tuple[str, str], tuple[str, float]] = {}

    def header(self, role: str, user: str) -> str:
        now = time.monotonic()
        cached = self.cache.get((role, user))
        if cached is None or now - cached[1] > TOKEN_RENEW:
            if len(self.cache) > 50_000:
                self.cache.clear()
            cached = (f"Bearer {issue_dev_token(self.settings, role, user, TOKEN_TTL)}", now)
            self.cache[(role, user)] = cached
        return cached[0]


class ShardLookup:
    """Which shard a patient or a resource lives on: its slot by the services' own hash (or the
    slot an encounter's or claim's id carries), the slot's shard from the gateway's
    `/admin/shards` (SRE token)."""

    def __init__(self, view: dict | None):
        self.slot_count = (view or {}).get("slot_count") or 0
        shards = sorted((view or {}).get("shards") or [], key=lambda s: s["slot_start"])
        self.starts = [s["slot_start"] for s in shards]
        self.names = [s["name"] for s in shards]

    def _of_slot(self, slot: int | None) -> str:
        if slot is None or not self.slot_count or not self.names:
            return "unknown"
        return self.names[max(bisect.bisect_right(self.starts, slot) - 1, 0)]

    def __call__(self, patient: str | None) -> str:
        if patient is None:
            return "none"
        return self._of_slot(slot_of(patient, self.slot_count) if self.slot_count else None)

    def of_resource(self, resource: str) -> str:
        """A patient id, or an encounter's or claim's id (which names its slot)."""
        return self(resource) if resource.startswith("pat-") else self._of_slot(slot_in_id(resource))


class Arrival:
    """One arrival's calls: the journey drives it, it measures and records every request."""

    __slots__ = ("engine", "index", "intended", "persona", "journey", "rng", "invalid", "_plan")

    def __init__(self, engine: Engine, index: int, due: float, persona: str, journey: str,
                 rng: random.Random, plan: PersonaPlan | None):
        self.engine, self.index, self.intended = engine, index, due
        self.persona, self.journey, self.rng = persona, journey, rng
        self.invalid = False
        self._plan = plan

    async def think(self) -> None:
        plan = self._plan
        pause = self.rng.uniform(plan.think_min, plan.think_max) if plan else 0.0
        self.intended += pause
        delay = self.intended - now()
        if delay > 0:
            await asyncio.sleep(delay)

    async def call(self, method: str, path: str, role: str, user: str, *, body: dict | None = None,
                   idempotency_key: str | None = None, patient: str | None = None,
                   expect: tuple[int, ...] = (200,)) -> tuple[int, object]:
        engine = self.engine
        if engine.closing:
            raise Abort()
        if engine.in_flight >= engine.cfg.max_in_flight:
            engine.drop()
            raise Abort()
        trace_id = f"{engine.trace_rng.getrandbits(128):032x}"
        headers = {"Authorization": engine.tokens.header(role, user),
                   "traceparent": f"00-{trace_id}-{engine.trace_rng.getrandbits(64):016x}-01"}
        if idempotency_key:
            headers["Idempotency-Key"] = idempotency_key
        status, data, first_send, sent, done, replayed = await engine.send(method, path, headers, body, self.rng)
        ok = status in expect if isinstance(status, int) else False
        if self.invalid:
            engine.rec.invalid += 1
        shard = engine.shard_of(patient)
        engine.record(self.persona, self.journey, shard, str(status), not ok,
                      self.intended, first_send, sent, done)
        slowest, ms = engine.rec.slowest, (done - self.intended) * 1000
        if slowest is None or ms > slowest.ms:
            engine.rec.slowest = Slowest(trace_id, self.journey, f"{method} {route_label(path)}", ms,
                                         engine.wall(self.intended))
        if engine.ledger is not None and method != "GET" and not self.invalid:
            engine.note_write(method, path, idempotency_key, shard, status, ok, data, first_send, sent, done, replayed)
        self.intended = done  # the next step is meant to follow this answer, after the think time
        if not ok:
            raise Abort()
        return status, data


class Engine:
    def __init__(self, cfg: EngineConfig, metrics: Metrics | None = None):
        self.cfg = cfg
        self.rec = Recorder()
        self.metrics = metrics
        self.in_flight = 0
        self.closing = False  # no new requests (schedule over or stopped)
        self.stop_reason: str | None = None
        self.tasks: set[asyncio.Task] = set()
        self.population = Population(cfg.population, cfg.seed)
        self.journeys = Journeys(self.population, cfg.run_key)
        self.tokens: Tokens | None = None
        self.shard_of = ShardLookup(None)
        self._wake = None
        self._logged_exception = False
        self.unstarted = 0  # arrivals whose task has not run yet
        self._urls: dict[str, URL] = {}
        self.ledger = WriteLedger() if cfg.ledger and cfg.personas else None
        self.trace_rng = random.Random()  # trace ids: unique per run, unlike the seeded draws
        self._wall_offset = time.time() - now()
        self.verify_cpu = 0.0  # CPU seconds of the read-back (not the load's)

    def wall(self, monotonic: float) -> float:
        """A monotonic timestamp as wall-clock seconds since the epoch."""
        return monotonic + self._wall_offset

    def note_write(self, method: str, path: str, key: str | None, shard: str, status: object, ok: bool,
                   data: object, first_send: float, sent: float, done: float, replayed: bool) -> None:
        """A write's answer into the ledger: acknowledged (on the shard its id names), or failed
        in a way that counts towards the shard's outage."""
        if ok:
            what = written(method, path, data)
            if what is not None:
                kind, resource, version = what
                self.ledger.acknowledged(kind, resource, version, key, self.shard_of.of_resource(resource),
                                         self.wall(sent), self.wall(done), replayed)
        elif status in OUTAGE:
            self.ledger.failed(shard, self.wall(first_send))

    # -- the pieces every request goes through ------------------------------------------------

    def drop(self) -> None:
        self.rec.dropped += 1
        if self.metrics:
            self.metrics.dropped.inc()

    def record(self, persona: str, journey: str, shard: str, status: str, error: bool,
               intended: float, first_send: float, sent: float, done: float) -> None:
        latency, service, lag = done - intended, done - sent, max(first_send - intended, 0.0)
        self.rec.record(persona, journey, shard, status, error, latency * 1e6, service * 1e6, lag * 1e6)
        if self.metrics:
            self.metrics.observe(persona, journey, shard, status, error, latency, lag)

    async def send(self, method: str, path: str, headers: dict | None, body: dict | None,
                   rng: random.Random | None, parse: bool = True):
        """One request with the client's retries: (status or 'timeout'/'error', parsed body,
        first send, last send, done, whether the answer is an idempotent replay)."""
        cfg, metrics = self.cfg, self.metrics
        self.in_flight += 1
        if metrics:
            metrics.in_flight.inc()
        attempt, first_send = 0, None
        try:
            while True:
                sent = now()
                if first_send is None:
                    first_send = sent
                data, replayed = None, False
                try:
                    url = self._urls.get(path)
                    if url is None:
                        url = URL(cfg.url + path, encoded=True)
                        if len(self._urls) < 10_000:
                            self._urls[path] = url
                    async with self.session.request(method, url, headers=headers, json=body) as resp:
                        raw = await resp.read()
                        status = resp.status
                        replayed = "Idempotent-Replayed" in resp.headers
                    if parse and raw and status < 500:
                        try:
                            data = json.loads(raw)
                        except ValueError:
                            data = None
                except asyncio.TimeoutError:
                    status = "timeout"
                    self.rec.timeouts += 1
                except aiohttp.ClientError:
                    status = "error"
                done = now()
                retryable = status in ("timeout", "error") or status in RETRYABLE
                if not retryable or attempt >= cfg.retries or self.closing:
                    return status, data, first_send, sent, done, replayed
                attempt += 1
                self.rec.retries += 1
                if self.metrics:
                    self.metrics.retries.inc()
                backoff = cfg.backoff * 2 ** (attempt - 1)
                await asyncio.sleep(rng.uniform(0, backoff) if cfg.jitter and rng else backoff)
        finally:
            self.in_flight -= 1
            if metrics:
                metrics.in_flight.dec()

    # -- arrivals ---------------------------------------------------------------------------

    async def _plain(self, index: int, due: float) -> None:
        """No personas: one GET of the target URL per arrival (the quick run, the benchmark)."""
        self.unstarted -= 1
        if self.in_flight >= self.cfg.max_in_flight:
            self.drop()
            return
        self.rec.journeys += 1
        status, _, first_send, sent, done, _ = await self.send("GET", "", None, None, None, parse=False)
        ok = isinstance(status, int) and status < 400
        self.record("-", "get", "none", str(status), not ok, due, first_send, sent, done)

    async def _journey(self, index: int, due: float) -> None:
        cfg = self.cfg
        self.unstarted -= 1
        rng = arrival_rng(cfg.seed, index)
        plan = draw(rng, cfg.personas, cfg.population, cfg.invalid_ratio)
        persona, journey, patient, invalid = plan.persona, plan.journey, plan.patient, plan.invalid
        arrival = Arrival(self, index, due, persona.name, journey, rng, persona)
        self.rec.journeys += 1
        try:
            if invalid:
                arrival.invalid = True
                await self.journeys.invalid(arrival, persona, journey, patient)
            else:
                await self.journeys.runner(journey)(arrival, persona, patient, index)
        except Abort:
            pass
        except Exception:  # a bug or an answer of an unexpected shape: counted, never silent
            self.rec.errors += 1
            self.rec.by_status["exception"] = self.rec.by_status.get("exception", 0) + 1
            if not self._logged_exception:
                self._logged_exception = True
                log.exception("journey %s of %s failed", journey, persona.name)

    async def _warm_up(self) -> None:
        """One request before the schedule, not counted: the resolver's thread, aiohttp's lazy
        imports and the first connection would otherwise be billed to the first arrivals."""
        try:
            async with self.session.get(self.cfg.url) as resp:
                await resp.read()
        except (aiohttp.ClientError, asyncio.TimeoutError):
            pass  # the run will count what fails

    async def _shards(self) -> None:
        try:
            headers = {"Authorization": self.tokens.header("sre", "load-sre")}
            async with self.session.get(self.cfg.url + "/admin/shards", headers=headers) as resp:
                if resp.status == 200:
                    self.shard_of = ShardLookup(await resp.json())
                    return
                log.warning("GET /admin/shards answered %s: requests are not attributed to shards", resp.status)
        except (aiohttp.ClientError, asyncio.TimeoutError) as error:
            log.warning("GET /admin/shards failed (%s): requests are not attributed to shards", error)
        self.shard_of = ShardLookup(None)

    # -- the run ------------------------------------------------------------------------------

    def stop(self, reason: str = "signal") -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
            log.info("stopping: %s", reason)
        self.closing = True
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    async def _sleep_until(self, when: float) -> None:
        delay = when - now()
        if delay <= 0:
            return
        self._wake = self.loop.create_future()
        handle = self.loop.call_later(delay, lambda: self._wake.done() or self._wake.set_result(None))
        try:
            await self._wake
        finally:
            handle.cancel()

    async def run(self) -> Recorder:
        cfg = self.cfg
        self.loop = loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, self.stop, "signal")
            except (RuntimeError, ValueError):  # not the main thread
                pass
        connector = aiohttp.TCPConnector(limit=cfg.max_in_flight + 8, limit_per_host=0, ttl_dns_cache=300)
        timeout = aiohttp.ClientTimeout(total=cfg.timeout)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout, skip_auto_headers=("User-Agent",),
                                         headers={"User-Agent": "pimlab-load"}, auto_decompress=False,
                                         cookie_jar=aiohttp.DummyCookieJar()) as self.session:
            arrive = self._plain
            if cfg.personas:
                self.tokens = Tokens()
                await self._shards()
                arrive = self._journey
            else:
                await self._warm_up()
            gc.freeze()  # what exists now is never garbage: shorter collections during the run
            start = now() + 0.02
            self.rec.stopped = "completed"
            tasks = self.tasks
            for index, offset in share(cfg.profile, cfg.index, cfg.of, cfg.limit):
                due = start + offset
                if due > now():
                    await self._sleep_until(due)
                if self.closing:
                    break
                self.rec.scheduled += 1
                if self.metrics:
                    self.metrics.scheduled.inc()
                self.unstarted += 1
                task = loop.create_task(arrive(index, due))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            else:
                if cfg.limit is not None and cfg.profile.expected_arrivals() >= cfg.limit:
                    self.rec.stopped = "count"
                else:
                    await self._sleep_until(start + cfg.profile.total)  # the schedule's end, even if sparse
            self.closing = True
            if self.stop_reason:
                self.rec.stopped = self.stop_reason
            # Requests in flight finish (bounded by the client timeout and its retries); journeys
            # waiting in think time are abandoned: they would start requests after the end.
            deadline = now() + cfg.timeout * (cfg.retries + 1) + cfg.backoff * 2 ** cfg.retries + 1
            while (self.in_flight or self.unstarted) and now() < deadline:
                await asyncio.sleep(0.01)
            end = now()
            for task in list(tasks):
                task.cancel()
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)
            gc.unfreeze()
        self.rec.elapsed = max(min(end, start + cfg.profile.total) - start, 1e-9) if self.rec.stopped == "completed" \
            else max(end - start, 1e-9)
        if self.ledger is not None:
            self.rec.outages = self.ledger.outages(self.wall(end))
            if cfg.verify and self.stop_reason is None:
                await self.verify_writes()
            else:
                self.rec.ledger = LedgerResult.counted(list(self.ledger.writes.values()))
                if cfg.verify:  # stopped before the read-back
                    self.rec.ledger.unverifiable = self.rec.ledger.acknowledged
        return self.rec

    async def verify_writes(self) -> None:
        """Read the ledger's writes back (a stop ends the read-back) and check the audit chains."""
        writes = list(self.ledger.writes.values())
        log.info("reading back %d acknowledged writes", len(writes))
        cpu = time.process_time()
        self.rec.ledger = await read_back(writes, self.cfg.url, self.tokens.header, self.cfg.timeout,
                                          stopped=lambda: self.stop_reason is not None)
        self.verify_cpu += time.process_time() - cpu

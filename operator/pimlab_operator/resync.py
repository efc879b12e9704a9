"""One sleeping task per object (a kopf daemon) that reconciles it when it is due or poked.

Due: the object's resync period has passed (`reconcile.resync_in`, after the policy in the
table of kinds). Poked: a watch event elsewhere concerns it (a child deleted or its status
moving, a Shard a Lab selects): the watch handler only wakes the task (`poke`), so it never
holds a worker thread waiting for the object's lock, and several events in a row become one
reconcile. A poked reconcile reads the object fresh, as every edge does, and so does a followed
one (a failover pass decides from what status remembers: it must be the latest).
"""

from __future__ import annotations

import asyncio
import copy
import time
from dataclasses import dataclass, field
from typing import Callable

import kopf

from pimlab_operator import reconcile
from pimlab_operator.reconcile import Context, Kind, ReconcileMemory


@dataclass
class _Task:
    loop: asyncio.AbstractEventLoop
    wake: asyncio.Event
    body: kopf.Body
    reasons: list[str] = field(default_factory=list)


def poke(memory: ReconcileMemory, kind: str, namespace: str, name: str, reason: str) -> bool:
    """Ask the object's task (`memory.tasks`) to reconcile now (from any thread); False if it
    has none (not started yet, or gone), when the caller reconciles by itself."""
    with memory.tasks_lock:
        task = memory.tasks.get((kind, namespace, name))
        if task is None:
            return False
        task.reasons.append(reason)
    task.loop.call_soon_threadsafe(task.wake.set)
    return True


def recheck(memory: ReconcileMemory, kind: str, namespace: str, name: str) -> None:
    """The object was reconciled by an edge: its task works out again when it is due (its
    period may have changed, e.g. a spec change made it followed)."""
    with memory.tasks_lock:
        task = memory.tasks.get((kind, namespace, name))
    if task is not None:
        task.loop.call_soon_threadsafe(task.wake.set)


def daemon(ctx: Context, kind: Kind) -> Callable:
    """The kopf daemon function of `kind`."""
    policy = kind.resync
    memory = ctx.memory

    async def resync(body, stopped, memo, logger, **_):
        key = (kind.name, body["metadata"]["namespace"], body["metadata"]["name"])
        loop = asyncio.get_running_loop()
        task = _Task(loop, asyncio.Event(), body)
        with memory.tasks_lock:
            memory.tasks[key] = task
        since = time.monotonic()
        try:
            while not stopped:
                task.wake.clear()  # before taking the reasons: a poke from now on wakes the sleep below
                with memory.tasks_lock:
                    reasons, task.reasons = task.reasons, []
                wait = reconcile.resync_in(ctx, kind, key, body, since)
                if not reasons and wait > 0:
                    # Sleeps until due; a reconcile by an edge (`recheck`) or a poke wakes it early.
                    await _sleep(stopped, task.wake, wait)
                    continue
                following = policy.following(body)
                trigger = reasons[-1] if reasons else policy.follow_trigger if following else "resync"
                # Only a plain resync may start from the watched body: an edge, and a followed
                # pass that acts on what status remembers (a failover), read the object fresh.
                quiet = not reasons and not following
                since = time.monotonic()
                try:
                    await loop.run_in_executor(memo.executor, reconcile.run, ctx, kind, copy.deepcopy(dict(body)),
                                               trigger, quiet)
                except kopf.TemporaryError as error:
                    logger.warning(f"{trigger}: {error}; again after the kind's period")
                except Exception as error:  # kopf's timers logged and retried; so does this loop
                    logger.exception(f"{trigger} failed: {error}; again after the kind's period")
        finally:
            with memory.tasks_lock:
                if memory.tasks.get(key) is task:
                    del memory.tasks[key]

    return resync


async def _sleep(stopped, wake: asyncio.Event, seconds: float) -> None:
    """Until `seconds` pass, the task is poked, or kopf stops the daemon."""
    waiters = [asyncio.ensure_future(stopped.wait(seconds)), asyncio.ensure_future(wake.wait())]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()

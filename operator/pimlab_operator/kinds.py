"""The table of kinds: each kind's model, step, resync policy and the children it owns. It is
the only place kopf triggers are registered (`register`)."""

from __future__ import annotations

import asyncio
import copy
import time

import kopf

from pimlab_operator import kube, reconcile, settings, watches
from pimlab_operator.chaos import step as chaos
from pimlab_operator.chaos.model import ChaosExperiment
from pimlab_operator.lab import step as lab
from pimlab_operator.lab.model import Lab
from pimlab_operator.personaload import step as personaload
from pimlab_operator.personaload.model import PersonaLoad
from pimlab_operator.reconcile import Kind, Resync
from pimlab_operator.schema import GROUP, VERSION
from pimlab_operator.shard import step as shard
from pimlab_operator.shard.model import Shard
from pimlab_operator.slo import step as slo
from pimlab_operator.slo.model import SLO

#: How often the failover manager looks at a postgres Shard's instances: a lost primary is
#: promoted away within `unhealthyAfterSeconds` plus about this much.
FAILOVER_PASS_SECONDS = 2.0

#: In the order the CRDs are generated and documented, each kind's resync policy (`Resync`):
#: a resync that changes nothing stretches the period x4, up to 10 min, except while `follow`
#: holds. Labs and Shards repair drift; a postgres Shard gets a failover pass every 2 s; a
#: PersonaLoad follows a run's pods while it runs; a ChaosExperiment measures recovery every
#: few seconds while it is in flight; an SLO that names a Prometheus reads its error budget again
#: every $PIMLAB_SLO_REFRESH_SECONDS (default 30 s). Events (the object's spec, a child
#: deleted or its status moving, a Shard for a Lab) reconcile at once whatever the period.
KINDS = (
    Kind(Lab, lab.step, Resync(20), children=lab.CHILDREN),
    Kind(Shard, shard.step, Resync(20, follow=shard.fails_over, follow_seconds=FAILOVER_PASS_SECONDS,
                                   follow_trigger="failover"), children=shard.CHILDREN),
    Kind(PersonaLoad, personaload.step, Resync(15, follow=personaload.running), children=personaload.CHILDREN),
    Kind(ChaosExperiment, chaos.step, Resync(5, follow=chaos.in_flight), children=chaos.CHILDREN),
    Kind(SLO, slo.step, Resync(slo.REFRESH_SECONDS, follow=slo.reads_budget, follow_trigger="refresh"),
         children=slo.CHILDREN),
)
BY_NAME = {kind.name: kind for kind in KINDS}


def _register_kind(kind: Kind) -> None:
    """Every kind reconciles on the same triggers: creation, a spec change and the operator's
    own restart (edges), and a resync (level) that repairs whatever an edge missed.

    The resync is one sleeping asyncio task per object (a kopf daemon), not a kopf timer: its
    period follows the object's quiet resyncs (`reconcile.resync_in`), it costs nothing while
    it sleeps, and any reconcile (an edge too) postpones it."""
    prefix = kind.name.lower()
    policy = kind.resync

    def on_change(body, reason, **_):
        reconcile.run(kind, dict(body), str(reason))

    async def resync(body, stopped, memo, logger, **_):
        key = (kind.name, body["metadata"]["namespace"], body["metadata"]["name"])
        loop = asyncio.get_running_loop()
        since = time.monotonic()
        while not stopped:
            wait = reconcile.resync_in(kind, key, body, since)
            if wait > 0:
                await stopped.wait(min(wait, policy.shortest))
                continue
            since = time.monotonic()
            trigger = policy.follow_trigger if policy.following(body) else "resync"
            try:
                await loop.run_in_executor(memo.executor, reconcile.run, kind, copy.deepcopy(dict(body)),
                                           trigger, True)
            except kopf.TemporaryError as error:
                logger.warning(f"{trigger}: {error}; again in {error.delay or policy.seconds}s")
            except Exception as error:  # kopf's timers logged and retried; so does this loop
                logger.exception(f"{trigger} failed: {error}; again in {policy.shortest}s")

    kopf.on.resume(GROUP, VERSION, kind.plural, id=f"{prefix}-resume")(on_change)
    kopf.on.create(GROUP, VERSION, kind.plural, id=f"{prefix}-create")(on_change)
    kopf.on.update(GROUP, VERSION, kind.plural, id=f"{prefix}-update", field="spec")(on_change)
    kopf.daemon(GROUP, VERSION, kind.plural, id=f"{prefix}-resync", cancellation_timeout=10)(resync)


def register() -> None:
    """Hand every trigger to kopf: settings, each kind's own, its children's, Shard -> Lab."""
    kopf.on.startup()(settings.configure)
    for kind in KINDS:
        _register_kind(kind)
    child_kinds = {(c.api_version, c.kind) for kind in KINDS for c in kind.children if not c.optional}
    for api_version, child_kind in sorted(child_kinds):
        group, _, version = api_version.rpartition("/")
        kopf.on.event(group, version, child_kind, labels=kube.MANAGED_BY,
                      id=f"child-{child_kind.lower()}")(watches.child_event(BY_NAME, child_kind))
    kopf.on.event(GROUP, VERSION, Shard.crd.plural, id="shard-to-lab")(watches.shard_to_labs(BY_NAME["Lab"]))

"""The table of kinds: each kind's model, step, resync period and the children it owns. It is
the only place kopf triggers are registered (`register`)."""

from __future__ import annotations

import kopf

from pimlab_operator import kube, reconcile, settings, watches
from pimlab_operator.chaos import step as chaos
from pimlab_operator.chaos.model import ChaosExperiment
from pimlab_operator.lab import step as lab
from pimlab_operator.lab.model import Lab
from pimlab_operator.personaload import step as personaload
from pimlab_operator.personaload.model import PersonaLoad
from pimlab_operator.reconcile import Kind
from pimlab_operator.schema import GROUP, VERSION
from pimlab_operator.shard import step as shard
from pimlab_operator.shard.model import Shard
from pimlab_operator.slo import step as slo
from pimlab_operator.slo.model import SLO

#: In the order the CRDs are generated and documented. Resync periods: Labs, Shards and
#: PersonaLoads follow pods and runs; a ChaosExperiment measures recovery every few seconds
#: while it is Recovering; an SLO reads its error budget from Prometheus again
#: ($PIMLAB_SLO_REFRESH_SECONDS, default 30 s).
KINDS = (
    Kind(Lab, lab.step, resync_seconds=20, children=lab.CHILDREN),
    Kind(Shard, shard.step, resync_seconds=20, children=shard.CHILDREN),
    Kind(PersonaLoad, personaload.step, resync_seconds=15, children=personaload.CHILDREN),
    Kind(ChaosExperiment, chaos.step, resync_seconds=5, idle_seconds=2, children=chaos.CHILDREN),
    Kind(SLO, slo.step, resync_seconds=slo.REFRESH_SECONDS, children=slo.CHILDREN),
)
BY_NAME = {kind.name: kind for kind in KINDS}


def _register_kind(kind: Kind) -> None:
    """Every kind reconciles on the same triggers: creation, a spec change and the operator's
    own restart (edges), and a resync timer (level) that repairs whatever an edge missed."""
    prefix = kind.name.lower()

    def on_change(body, reason, **_):
        reconcile.run(kind, dict(body), str(reason))

    def resync(body, **_):
        reconcile.run(kind, dict(body), "resync")

    kopf.on.resume(GROUP, VERSION, kind.plural, id=f"{prefix}-resume")(on_change)
    kopf.on.create(GROUP, VERSION, kind.plural, id=f"{prefix}-create")(on_change)
    kopf.on.update(GROUP, VERSION, kind.plural, id=f"{prefix}-update", field="spec")(on_change)
    kopf.timer(GROUP, VERSION, kind.plural, id=f"{prefix}-resync",
               interval=kind.resync_seconds, idle=kind.idle_seconds)(resync)


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
    kopf.on.event(GROUP, VERSION, ChaosExperiment.crd.plural, id="chaosexperiment-cleanup",
                  when=lambda body, **_: bool(body.get("metadata", {}).get("deletionTimestamp")))(
        lambda body, **_: chaos.finalize(dict(body)))
    _register_failover_timer(BY_NAME["Shard"])


#: How often the failover manager looks at a postgres Shard's instances: a lost primary is
#: promoted away within `unhealthyAfterSeconds` plus about this much.
FAILOVER_PASS_SECONDS = 2.0


def _register_failover_timer(kind: Kind) -> None:
    """engine: postgres Shards, and sqlserver ones once their availability group exists (status
    .engine is written only by a failover pass, never on kwok), get a failover pass every few
    seconds, besides the resync."""

    def failover(body, **_):
        reconcile.run(kind, dict(body), "failover")

    kopf.timer(GROUP, VERSION, kind.plural, id="shard-failover", interval=FAILOVER_PASS_SECONDS,
               when=lambda spec, status, **_: (spec or {}).get("engine") == "postgres"
               or (status or {}).get("engine") == "sqlserver")(failover)

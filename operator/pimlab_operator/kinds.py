"""The table of kinds: each kind's model, step, resync policy and the children it owns. It is
the only place kopf triggers are registered (`register`)."""

from __future__ import annotations

import kopf

from pimlab_operator import kube, metrics, reconcile, resync, settings, watches
from pimlab_operator.chaos import step as chaos
from pimlab_operator.chaos.model import ChaosExperiment
from pimlab_operator.config import Settings
from pimlab_operator.drill import step as drill
from pimlab_operator.drill.model import Drill
from pimlab_operator.lab import step as lab
from pimlab_operator.lab.model import Lab
from pimlab_operator.personaload import step as personaload
from pimlab_operator.personaload.model import PersonaLoad
from pimlab_operator.reconcile import Context, Kind, ReconcileMemory, Resync
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
#: holds. Labs and Shards repair drift (a postgres Shard's 2 s failover pass is a timer of its
#: own); a PersonaLoad follows a run's pods while it runs; a ChaosExperiment measures recovery
#: every few seconds while it is in flight; an SLO that names a Prometheus reads its error
#: budget again every `slo_refresh_seconds` of the settings ($PIMLAB_SLO_REFRESH_SECONDS,
#: default 30 s). Events (the object's spec, a child deleted or its status moving, a Shard for
#: a Lab) reconcile at once whatever the period.
KINDS = (
    Kind(Lab, lab.step, Resync(20), children=lab.CHILDREN),
    Kind(Shard, shard.step, Resync(20), children=shard.CHILDREN),
    Kind(PersonaLoad, personaload.step, Resync(15, follow=personaload.running), children=personaload.CHILDREN),
    Kind(ChaosExperiment, chaos.step, Resync(5, follow=chaos.in_flight), children=chaos.CHILDREN),
    Kind(SLO, slo.step, Resync(lambda settings: settings.slo_refresh_seconds, follow=slo.reads_budget,
                               follow_trigger="refresh"), children=slo.CHILDREN),
    Kind(Drill, drill.step, Resync(5, follow=drill.running, follow_seconds=2), children=drill.CHILDREN),
)
BY_NAME = {kind.name: kind for kind in KINDS}


def _register_kind(ctx: Context, kind: Kind) -> None:
    """Every kind reconciles on the same triggers: creation, a spec change and the operator's
    own restart (edges), and its resync task (`resync.daemon`: the level that repairs whatever
    an edge missed, and the edges from other objects' watches)."""
    prefix = kind.name.lower()

    def on_change(body, reason, **_):
        reconcile.run(ctx, kind, dict(body), str(reason))
        resync.recheck(ctx.memory, kind.name, body["metadata"]["namespace"], body["metadata"]["name"])

    kopf.on.resume(GROUP, VERSION, kind.plural, id=f"{prefix}-resume")(on_change)
    kopf.on.create(GROUP, VERSION, kind.plural, id=f"{prefix}-create")(on_change)
    kopf.on.update(GROUP, VERSION, kind.plural, id=f"{prefix}-update", field="spec")(on_change)
    kopf.daemon(GROUP, VERSION, kind.plural, id=f"{prefix}-resync", cancellation_timeout=10)(resync.daemon(ctx, kind))


def register(operator_settings: Settings) -> None:
    """Hand every trigger to kopf: kopf's settings, each kind's own, its children's, Shard ->
    Lab. Every handler reconciles in one context: `operator_settings` and the operator's one
    `ReconcileMemory`, made here."""
    ctx = Context(operator_settings, ReconcileMemory())
    kopf.on.startup()(settings.configure)
    for kind in KINDS:
        _register_kind(ctx, kind)
    child_kinds = {(c.api_version, c.kind) for kind in KINDS for c in kind.children if not c.optional}
    reconcile.watch_children(ctx.memory, child_kinds)
    for api_version, child_kind in sorted(child_kinds):
        group, _, version = api_version.rpartition("/")
        kopf.on.event(group, version, child_kind, labels=kube.MANAGED_BY,
                      id=f"child-{child_kind.lower()}")(watches.child_event(ctx, BY_NAME, child_kind))
    kopf.on.event(GROUP, VERSION, Shard.crd.plural, id="shard-to-lab")(watches.shard_to_labs(ctx, BY_NAME["Lab"]))
    # returns None: kopf writes an event handler's result into the object's status
    kopf.on.event(GROUP, VERSION, Shard.crd.plural, id="shard-forget",
                  when=lambda type, **_: type == "DELETED")(
        lambda body, **_: ctx.memory.forget(("Shard", body["metadata"]["namespace"], body["metadata"]["name"]),
                                            body["metadata"].get("uid")))
    _register_failover_timer(ctx, BY_NAME["Shard"])
    # kinds whose deletion restores what they changed (a finalizer of their own) and whose
    # metric series go with them
    for model, finalize, forget in ((ChaosExperiment, chaos.finalize, metrics.forget_chaos_experiment),
                                    (Drill, drill.finalize, metrics.forget_drill)):
        prefix = model.__name__.lower()
        kopf.on.event(GROUP, VERSION, model.crd.plural, id=f"{prefix}-cleanup",
                      when=lambda body, **_: bool(body.get("metadata", {}).get("deletionTimestamp")))(
            lambda body, finalize=finalize, **_: finalize(dict(body)))
        kopf.on.event(GROUP, VERSION, model.crd.plural, id=f"{prefix}-forget",
                      when=lambda type, **_: type == "DELETED")(
            lambda body, forget=forget, **_: forget(body["metadata"]["namespace"], body["metadata"]["name"]))


def _register_failover_timer(ctx: Context, kind: Kind) -> None:
    """A postgres Shard, and a sqlserver one once its availability group exists, gets a failover
    pass every FAILOVER_PASS_SECONDS from a kopf timer of its own, besides its resync task: the
    pass keeps its 2 s period whatever the resync back-off and the pokes of child events, and it
    is the arrangement under which the real-node failover tests observe a planned switchover as
    a switchover (not as a PrimaryUnhealthy failover). Passes never overlap (shard/step.py)."""

    def failover(body, **_):
        reconcile.run(ctx, kind, dict(body), "failover")

    kopf.timer(GROUP, VERSION, kind.plural, id="shard-failover", interval=FAILOVER_PASS_SECONDS,
               when=lambda body, **_: shard.fails_over(body))(failover)


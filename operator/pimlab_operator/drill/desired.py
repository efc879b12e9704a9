"""What a Drill creates, computed purely from its spec: its PersonaLoad (the declared load,
lasting the whole run, ledger on) and one ChaosExperiment per injection, named
`<drill>-load` and `<drill>-<step name>` so a restart finds them and never makes them twice.
When they are created is the state machine's business (`status.py`).
"""

from __future__ import annotations

import math

from pimlab_operator.drill.model import DrillSpec
from pimlab_operator.render import owned, render

#: Held on a Drill while it may have a load running or a fault in place (`step.finalize`).
FINALIZER = "pim-sre.lab/drill-cleanup"
LABELS = {"app.kubernetes.io/name": "pim-drill", "app.kubernetes.io/part-of": "pim-sre-lab"}


def load_name(drill: str) -> str:
    return f"{drill}-load"


def experiment_name(drill: str, step: str) -> str:
    return f"{drill}-{step}"


def load_spec(spec: DrillSpec) -> dict:
    """The declared load aimed at the drill's Lab, run once for the whole drill (ramp-up,
    baseline, the last offset, recovery), with the engine's write ledger on."""
    load = spec.load.to_k8s()
    load.pop("schedule", None)
    load["target"] = {"labRef": spec.lab_ref}
    load["profile"]["duration"] = f"{math.ceil(spec.planned_seconds())}s"
    load["ledger"] = {**(load.get("ledger") or {}), "enabled": True}
    return load


def children(body: dict, spec: DrillSpec, with_load: bool, injections: list[str]) -> list[dict]:
    """The PersonaLoad (`with_load`) and the ChaosExperiments of the named inject steps, owned
    by the Drill and labelled `pim-sre.lab/drill: <name>`."""
    name = body["metadata"]["name"]
    load = {"name": load_name(name), "spec": load_spec(spec)} if with_load else None
    experiments = [{"name": experiment_name(name, i.name), "spec": i.experiment.to_k8s()}
                   for i in spec.injections() if i.name in injections]
    labels = {**LABELS, "app.kubernetes.io/instance": name}
    return owned(render("drill/children.yaml.j2", labels=labels, load=load, experiments=experiments), body)

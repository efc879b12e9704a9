"""What a ChaosExperiment's run touches, computed purely from its spec and the pods it may hit:
the targets (planned within the blast radius), the Chaos Mesh objects of a network or CPU
fault, the secondary a switchover promotes, and whether something is left to clean up.

The run itself (when it injects, how its recovery is measured, what status says at each step)
is in `status.py`.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from pimlab_operator.chaos.model import ChaosExperimentSpec, ChaosParameters
from pimlab_operator.objects import selector_matches
from pimlab_operator.render import owned, render

CHAOS_MESH = {"networkDelay": "NetworkChaos", "networkLoss": "NetworkChaos",
              "networkPartition": "NetworkChaos", "cpuStress": "StressChaos"}
CHAOS_MESH_VERSION = "chaos-mesh.org/v1alpha1"
#: Held on an experiment while it has something in the cluster to remove.
FINALIZER = "pim-sre.lab/chaos-cleanup"
#: On a Shard: which experiment asked it for a switchover (so cleanup removes only its own).
REQUESTED_BY_ANNOTATION = "pim-sre.lab/switchover-requested-by"


@dataclass
class Plan:
    """Pods the run would hit, out of how many matched, or why it must not run."""

    targets: list[str]
    matched: int
    refusal: tuple[str, str] | None = None  # (reason, message)


def alive(pods: list[dict]) -> list[dict]:
    """Pods neither being deleted nor finished."""
    return [p for p in pods if not p["metadata"].get("deletionTimestamp")
            and (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed")]


def target_namespace(body: dict, spec: ChaosExperimentSpec) -> str:
    selector = spec.target.selector
    return (selector.namespace if selector else None) or body["metadata"]["namespace"]


def in_target(spec: ChaosExperimentSpec, pod: dict) -> bool:
    """Whether `pod` is one the target names: the selector matches it, or it is the Shard's."""
    target = spec.target
    if target.shard_ref:
        return pod["metadata"]["name"].rsplit("-", 1)[0] == target.shard_ref
    return selector_matches(target.selector.to_k8s(), pod["metadata"].get("labels"))


def candidates(spec: ChaosExperimentSpec, pods: list[dict], shard: dict | None) -> tuple[list[str], int]:
    """(pods that may be hit, pods matched): a shard's primary out of its pods, or the pods
    the selector matches."""
    matched = [p for p in alive(pods) if in_target(spec, p)]
    if spec.target.shard_ref:
        primary = ((shard or {}).get("status") or {}).get("currentPrimary") or f"{spec.target.shard_ref}-0"
        return ([primary] if any(p["metadata"]["name"] == primary for p in matched) else []), len(matched)
    names = sorted(p["metadata"]["name"] for p in matched)
    return names, len(names)


def plan(body: dict, spec: ChaosExperimentSpec, pods: list[dict], shard: dict | None) -> Plan:
    """Choose targets by mode/value (seeded by the object's uid, so a re-plan picks the same
    pods) and refuse when they exceed the blast radius."""
    pool, matched = candidates(spec, pods, shard)
    if not pool:
        return Plan([], matched, ("NoTargets", "no running pod matches the target"))
    mode, value = spec.target.mode, spec.target.value
    count = {"one": 1, "fixed": value, "all": len(pool)}.get(mode) or math.ceil(len(pool) * (value or 0) / 100)
    count = min(max(count, 1), len(pool))
    targets = sorted(random.Random(body["metadata"].get("uid", "")).sample(pool, count))
    limit = spec.blast_radius
    if count > limit.max_pods or count * 100 > limit.max_percent * max(matched, 1):
        return Plan(targets, matched, ("BlastRadiusExceeded",
                    f"plan hits {count} of {matched} matching pods ({count * 100 // max(matched, 1)}%), "
                    f"blast radius allows {limit.max_pods} pods and {limit.max_percent}%"))
    return Plan(targets, matched)


def chaos_mesh_children(body: dict, spec: ChaosExperimentSpec, targets: list[str]) -> list[dict]:
    """The Chaos Mesh object of a network or CPU fault on exactly `targets`; the template lays
    out the parameters as Chaos Mesh spells them."""
    name = body["metadata"]["name"]
    labels = {"app.kubernetes.io/name": "pim-chaos", "app.kubernetes.io/instance": name,
              "app.kubernetes.io/part-of": "pim-sre-lab"}
    parameters = (spec.parameters or ChaosParameters()).to_k8s()
    children = render("chaos/chaos-mesh.yaml.j2", name=name, labels=labels, action=spec.action,
                      namespace=target_namespace(body, spec), targets=targets, duration=spec.duration,
                      parameters=parameters)
    return owned(children, body)


def failover_mode(spec: ChaosExperimentSpec) -> str:
    """sqlFailover's mode: switchover unless the spec asks for a fenced failover."""
    return (spec.parameters.failover_mode if spec.parameters else None) or "switchover"


def needs_cleanup(spec: ChaosExperimentSpec) -> bool:
    """Whether a run of this action leaves something to remove (so it holds the finalizer)."""
    return spec.action in CHAOS_MESH or (spec.action == "sqlFailover" and failover_mode(spec) == "switchover")


def switchover_target(shard: dict | None, primary: str) -> str | None:
    """The secondary a switchover promotes: a Ready, streaming one, synchronous first, then the
    least lag (ties by name)."""
    replicas = ((shard or {}).get("status") or {}).get("replicas") or []
    found = [r for r in replicas if r.get("pod") != primary and r.get("role") == "secondary"
             and r.get("ready") and r.get("streaming") is not False]
    found.sort(key=lambda r: (not r.get("synchronousCommit"), r.get("lagBytes") or 0, r["pod"]))
    return found[0]["pod"] if found else None

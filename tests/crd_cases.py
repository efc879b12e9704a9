"""Valid objects of every kind and the invalid variants the schema must refuse.

Shared by `test_crds.py` (pydantic refuses them too) and `cluster/test_validation.py` (the real
apiserver refuses them with a message naming the field).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

API_VERSION = "pim-sre.lab/v1alpha1"
DELETE = object()  # a patch value that removes the key


def _obj(kind: str, name: str, spec: dict[str, Any], labels: dict[str, str] | None = None) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name}
    if labels:
        metadata["labels"] = labels
    return {"apiVersion": API_VERSION, "kind": kind, "metadata": metadata, "spec": spec}


VALID: dict[str, dict[str, Any]] = {
    "Lab": _obj("Lab", "pim", {
        "shardSelector": {"matchLabels": {"lab": "pim"}},
        "services": {"gateway": {"replicas": 2, "autoscaling": {"minReplicas": 2, "maxReplicas": 6, "targetCPU": 70}}},
        "auth": {"issuer": "https://idp.lab.local", "audience": "pim-api"},
    }),
    "Shard": _obj("Shard", "shard-00", {
        "ordinal": 0, "slots": {"start": 0, "end": 341}, "replicas": 3, "synchronousReplicas": 1,
        "primary": "shard-00-1", "storage": {"size": "20Gi"},
    }, labels={"lab": "pim"}),
    "PersonaLoad": _obj("PersonaLoad", "load", {
        "target": {"labRef": "pim"},
        "personas": [
            {"name": "patient", "weight": 70, "journeys": ["bookEncounter", "reviewEncounter"],
             "thinkTime": {"min": "1s", "max": "5s"}},
            {"name": "clinician", "weight": 30, "journeys": ["documentEncounter"]},
            {"name": "admin", "weight": 3},  # no journeys: the persona's standard ones
        ],
        "profile": {"pattern": "diurnal", "rate": 200, "peakRate": 800, "duration": "30m"},
        "failurePressure": {"invalidRequestRatio": 0.02, "bursts": {"every": "5m", "factor": 4, "length": "20s"}},
    }),
    "ChaosExperiment": _obj("ChaosExperiment", "drill", {
        "action": "sqlFailover", "target": {"shardRef": "shard-00"},
        "blastRadius": {"maxPods": 1, "maxPercent": 34}, "duration": "5m", "dryRun": False, "reference": "ADR-012",
    }),
    "SLO": _obj("SLO", "booking", {
        "service": "encounter", "journey": "bookEncounter",
        "sli": {"ratio": {
            "errors": 'sum(rate(pim_http_requests_total{route="/encounters",status=~"5.."}[{{window}}]))',
            "total": 'sum(rate(pim_http_requests_total{route="/encounters"}[{{window}}]))',
        }},
        "objective": 99.9, "window": "30d",
    }),
    "Drill": _obj("Drill", "primary-loss", {
        "labRef": "pim",
        "load": {"target": {"labRef": "pim"}, "personas": [{"name": "patient", "weight": 1}], "profile": {"rate": 5}},
        "steps": [
            {"baseline": {"duration": "60s"}},
            {"inject": {"name": "kill-primary", "after": "0s",
                        "experiment": {"action": "podKill", "target": {"shardRef": "shard-00"}, "dryRun": True}}},
            {"inject": {"name": "kill-again", "after": "30s",
                        "experiment": {"action": "podKill", "target": {"shardRef": "shard-01"}, "dryRun": True}}},
            {"recover": {"duration": "90s"}},
        ],
        "hypotheses": {"slos": [{"name": "booking", "maxBudgetBurn": 0.05}], "maxRecoverySeconds": 15,
                       "latency": [{"journey": "bookEncounter", "p95Ms": 1000}]},
        "abort": {"fastBurn": {"burnRate": 14.4, "slos": ["booking"]}},
        "compareTo": {"p95WorsePercent": 20},
    }),
}


def patched(obj: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """A deep copy of `obj` with `patch` merged in (dicts merge, DELETE removes, rest replaces)."""
    result = copy.deepcopy(obj)

    def merge(target: dict[str, Any], changes: dict[str, Any]) -> None:
        for key, value in changes.items():
            if value is DELETE:
                target.pop(key, None)
            elif isinstance(value, dict) and isinstance(target.get(key), dict):
                merge(target[key], value)
            else:
                target[key] = copy.deepcopy(value)

    merge(result, patch)
    return result


@dataclass(frozen=True)
class Invalid:
    """An object the apiserver must refuse, and the field its message must name."""

    id: str
    kind: str
    spec_patch: dict[str, Any]
    field: str  # appears in the apiserver's error message
    root_patch: dict[str, Any] = field(default_factory=dict)
    pydantic_refuses: bool = True

    def object(self) -> dict[str, Any]:
        obj = patched(VALID[self.kind], {"spec": self.spec_patch})
        return patched(obj, self.root_patch)


_GW = "spec.services.gateway"
_P0 = {"name": "patient", "weight": 70, "journeys": ["bookEncounter"]}
_BASELINE, _RECOVER = VALID["Drill"]["spec"]["steps"][0], VALID["Drill"]["spec"]["steps"][-1]
_INJECT_0, _INJECT_30 = VALID["Drill"]["spec"]["steps"][1:3]

INVALID: list[Invalid] = [
    # SLO
    Invalid("slo-objective-100", "SLO", {"objective": 100}, "spec.objective"),
    Invalid("slo-objective-0", "SLO", {"objective": 0}, "spec.objective"),
    Invalid("slo-two-sli-kinds", "SLO", {"sli": {"raw": {"errorRatio": "x[{{window}}]"}}}, "spec.sli"),
    Invalid("slo-no-sli-kind", "SLO", {"sli": {"ratio": DELETE}}, "spec.sli"),
    Invalid("slo-window-forever", "SLO", {"window": "forever"}, "spec.window"),
    Invalid("slo-ratio-without-window", "SLO", {"sli": {"ratio": {"errors": "sum(rate(x[5m]))"}}}, "spec.sli.ratio.errors"),
    Invalid("slo-unknown-journey", "SLO", {"journey": "teleport"}, "spec.journey"),
    Invalid("slo-page-for-unparsable", "SLO", {"alerting": {"page": {"for": "2 minutes"}}}, "spec.alerting.page.for"),
    Invalid("slo-unknown-service", "SLO", {"service": "frontend"}, "spec.service"),
    Invalid("slo-objective-100-cel-message", "SLO", {"objective": 100.0}, "leaves no error budget"),
    Invalid("slo-tier-same-windows", "SLO", {"alerting": {"page": {"tiers": [
        {"longWindow": "1h", "shortWindow": "5m", "burnRate": 14.4},
        {"longWindow": "1h", "shortWindow": "5m", "burnRate": 10}]}}}, "spec.alerting.page.tiers"),
    Invalid("slo-tier-burn-rate-zero", "SLO", {"alerting": {"page": {"tiers": [
        {"longWindow": "1h", "shortWindow": "5m", "burnRate": 0}]}}}, "burnRate"),
    # PersonaLoad
    Invalid("load-weight-zero", "PersonaLoad", {"personas": [dict(_P0, weight=0)]}, "spec.personas[0].weight"),
    Invalid("load-no-personas", "PersonaLoad", {"personas": []}, "spec.personas"),
    Invalid("load-unknown-journey", "PersonaLoad", {"personas": [dict(_P0, journeys=["teleport"])]},
            "spec.personas[0].journeys[0]"),
    Invalid("load-custom-persona-without-journeys", "PersonaLoad", {"personas": [{"name": "frontdesk", "weight": 1}]},
            "spec.personas[0].journeys"),
    Invalid("load-duplicate-persona", "PersonaLoad", {"personas": [_P0, dict(_P0, weight=5)]}, "spec.personas[1]"),
    Invalid("load-unknown-pattern", "PersonaLoad", {"profile": {"pattern": "sawtooth"}}, "spec.profile.pattern"),
    Invalid("load-peak-below-rate", "PersonaLoad", {"profile": {"peakRate": 100}}, "spec.profile.peakRate"),
    Invalid("load-diurnal-without-peak", "PersonaLoad", {"profile": {"peakRate": DELETE}}, "spec.profile.peakRate"),
    Invalid("load-target-both", "PersonaLoad", {"target": {"url": "http://gw.lab:8080"}}, "spec.target"),
    Invalid("load-think-min-above-max", "PersonaLoad",
            {"personas": [dict(_P0, thinkTime={"min": "10s", "max": "5s"})]}, "spec.personas[0].thinkTime.min"),
    Invalid("load-invalid-ratio-above-1", "PersonaLoad", {"failurePressure": {"invalidRequestRatio": 1.5}},
            "spec.failurePressure.invalidRequestRatio"),
    Invalid("load-burst-longer-than-period", "PersonaLoad",
            {"failurePressure": {"bursts": {"every": "10s", "length": "20s"}}}, "spec.failurePressure.bursts.length"),
    Invalid("load-bad-schedule", "PersonaLoad", {"schedule": "every night"}, "spec.schedule"),
    Invalid("load-bad-duration", "PersonaLoad", {"profile": {"duration": "30 minutes"}}, "spec.profile.duration"),
    # ChaosExperiment
    Invalid("chaos-max-pods-zero", "ChaosExperiment", {"blastRadius": {"maxPods": 0}}, "spec.blastRadius.maxPods"),
    Invalid("chaos-max-percent-101", "ChaosExperiment", {"blastRadius": {"maxPercent": 101}}, "spec.blastRadius.maxPercent"),
    Invalid("chaos-max-percent-zero", "ChaosExperiment", {"blastRadius": {"maxPercent": 0}}, "spec.blastRadius.maxPercent"),
    Invalid("chaos-no-reference", "ChaosExperiment", {"reference": DELETE}, "spec.reference"),
    Invalid("chaos-reference-not-adr-or-ticket", "ChaosExperiment", {"reference": "soon"}, "spec.reference"),
    Invalid("chaos-target-both", "ChaosExperiment",
            {"action": "podKill", "target": {"selector": {"matchLabels": {"app": "x"}}}}, "spec.target"),
    Invalid("chaos-target-neither", "ChaosExperiment", {"target": {"shardRef": DELETE}}, "spec.target"),
    Invalid("chaos-sqlfailover-by-selector", "ChaosExperiment",
            {"target": {"shardRef": DELETE, "selector": {"matchLabels": {"app": "x"}}}}, "spec.target"),
    Invalid("chaos-empty-selector", "ChaosExperiment",
            {"action": "podKill", "target": {"shardRef": DELETE, "selector": {"matchLabels": {}}}}, "spec.target.selector"),
    Invalid("chaos-delay-without-latency", "ChaosExperiment", {"action": "networkDelay"}, "spec.parameters.latency"),
    Invalid("chaos-loss-without-loss", "ChaosExperiment", {"action": "networkLoss"}, "spec.parameters.loss"),
    Invalid("chaos-podkill-with-loss", "ChaosExperiment", {"action": "podKill", "parameters": {"loss": "10"}},
            "spec.parameters"),
    Invalid("chaos-jitter-without-latency", "ChaosExperiment",
            {"action": "networkDelay", "parameters": {"jitter": "50ms"}}, "spec.parameters.jitter"),
    Invalid("chaos-fixed-without-value", "ChaosExperiment", {"target": {"mode": "fixed"}}, "spec.target.value"),
    Invalid("chaos-unknown-action", "ChaosExperiment", {"action": "meteorStrike"}, "spec.action"),
    Invalid("chaos-abort-if-without-threshold", "ChaosExperiment", {"abortIf": [{"sloRef": "booking"}]},
            "spec.abortIf[0]"),
    Invalid("chaos-concurrency-without-schedule", "ChaosExperiment", {"concurrencyPolicy": "Replace"},
            "spec.concurrencyPolicy"),
    Invalid("chaos-container-on-podkill", "ChaosExperiment",
            {"action": "podKill", "parameters": {"container": "app"}}, "spec.parameters"),
    Invalid("chaos-failover-mode-on-containerkill", "ChaosExperiment",
            {"action": "containerKill", "parameters": {"failoverMode": "switchover"}}, "spec.parameters"),
    Invalid("chaos-switchover-to-with-fenced-failover", "ChaosExperiment",
            {"parameters": {"failoverMode": "fencedFailover", "switchoverTo": "shard-00-1"}},
            "spec.parameters.switchoverTo"),
    # Drill
    Invalid("drill-load-scheduled", "Drill", {"load": {"schedule": "@hourly"}}, "spec.load.schedule"),
    Invalid("drill-load-other-lab", "Drill", {"load": {"target": {"labRef": "other"}}}, "spec.load.target"),
    Invalid("drill-load-to-url", "Drill", {"load": {"target": {"labRef": DELETE, "url": "http://gw:8080"}}},
            "spec.load.target"),
    Invalid("drill-inject-before-baseline", "Drill", {"steps": [_INJECT_0, _BASELINE, _RECOVER]}, "spec.steps"),
    Invalid("drill-no-recover", "Drill", {"steps": [_BASELINE, _INJECT_0, _INJECT_30]}, "spec.steps"),
    Invalid("drill-two-baselines", "Drill", {"steps": [_BASELINE, _BASELINE, _INJECT_0, _RECOVER]}, "spec.steps"),
    Invalid("drill-step-of-two-kinds", "Drill",
            {"steps": [{**_BASELINE, **_RECOVER}, _INJECT_0, _RECOVER]}, "spec.steps[0]"),
    Invalid("drill-offsets-descending", "Drill", {"steps": [_BASELINE, _INJECT_30, _INJECT_0, _RECOVER]}, "spec.steps"),
    Invalid("drill-inject-names-repeat", "Drill",
            {"steps": [_BASELINE, _INJECT_0, {"inject": {**_INJECT_30["inject"], "name": "kill-primary"}}, _RECOVER]},
            "spec.steps"),
    Invalid("drill-inject-scheduled", "Drill",
            {"steps": [_BASELINE, {"inject": {**_INJECT_0["inject"], "experiment": {
                **_INJECT_0["inject"]["experiment"], "schedule": "@hourly"}}}, _RECOVER]},
            "spec.steps[1].inject.experiment.schedule"),
    Invalid("drill-budget-burn-above-1", "Drill", {"hypotheses": {"slos": [{"name": "booking", "maxBudgetBurn": 2}]}},
            "spec.hypotheses.slos[0].maxBudgetBurn"),
    Invalid("drill-latency-without-ceiling", "Drill", {"hypotheses": {"latency": [{"journey": "bookEncounter"}]}},
            "spec.hypotheses.latency[0]"),
    Invalid("drill-compare-unknown-policy", "Drill", {"compareTo": {"policy": "best"}}, "spec.compareTo.policy"),
    Invalid("drill-name-too-long", "Drill", {}, "metadata.name", root_patch={"metadata": {"name": "d" * 41}},
            pydantic_refuses=False),
    # Shard
    Invalid("shard-replicas-6", "Shard", {"replicas": 6}, "spec.replicas"),
    Invalid("shard-replicas-0", "Shard", {"replicas": 0, "synchronousReplicas": 0, "primary": DELETE}, "spec.replicas"),
    Invalid("shard-sync-equals-replicas", "Shard", {"synchronousReplicas": 3}, "spec.synchronousReplicas"),
    Invalid("shard-slots-reversed", "Shard", {"slots": {"start": 400, "end": 341}}, "spec.slots.start"),
    Invalid("shard-slot-1024", "Shard", {"slots": {"end": 1024}}, "spec.slots.end"),
    Invalid("shard-primary-of-other-shard", "Shard", {"primary": "shard-01-0"}, "spec.primary"),
    Invalid("shard-primary-beyond-replicas", "Shard", {"primary": "shard-00-3"}, "spec.primary"),
    Invalid("shard-storage-size-not-quantity", "Shard", {"storage": {"size": "lots"}}, "spec.storage.size"),
    Invalid("shard-typo-field", "Shard", {"replica": 3}, "spec.replica"),
    Invalid("shard-unknown-engine", "Shard", {"engine": "mysql"}, "spec.engine"),
    Invalid("shard-async-automatic-failover", "Shard", {"synchronousReplicas": 0}, "spec.synchronousReplicas"),
    # Lab
    Invalid("lab-negative-replicas", "Lab", {"services": {"patient": {"replicas": -1}}}, "spec.services.patient.replicas"),
    Invalid("lab-autoscaling-min-above-max", "Lab",
            {"services": {"gateway": {"autoscaling": {"minReplicas": 8}}}}, f"{_GW}.autoscaling.minReplicas"),
    Invalid("lab-target-cpu-0", "Lab", {"services": {"gateway": {"autoscaling": {"targetCPU": 0}}}},
            f"{_GW}.autoscaling.targetCPU"),
    Invalid("lab-target-cpu-101", "Lab", {"services": {"gateway": {"autoscaling": {"targetCPU": 101}}}},
            f"{_GW}.autoscaling.targetCPU"),
    Invalid("lab-issuer-not-url", "Lab", {"auth": {"issuer": "idp.lab.local"}}, "spec.auth.issuer"),
]

#: The one rule only an update can break: `self == oldSelf` on Shard.spec.ordinal.
IMMUTABLE_ORDINAL_FIELD = "spec.ordinal"

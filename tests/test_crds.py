"""The CRDs in crds/ are what the models generate, are structural, and the samples fit the models."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel, ValidationError

from pimlab_operator import crdgen
from pimlab_operator.chaos.model import ChaosExperiment
from pimlab_operator.kinds import KINDS as KIND_TABLE
from pimlab_operator.lab.model import Lab
from pimlab_operator.personaload.model import PersonaLoad
from pimlab_operator.schema import duration_seconds
from pimlab_operator.shard.model import Shard
from pimlab_operator.slo.model import SLO

KINDS = tuple(kind.model for kind in KIND_TABLE)

ROOT = Path(__file__).resolve().parent.parent
BY_KIND = {resource.__name__: resource for resource in KINDS}


def _load_cases():
    """tests/crd_cases.py, imported by path so it works whatever sys.path pytest set up."""
    if "pimlab_crd_cases" in sys.modules:
        return sys.modules["pimlab_crd_cases"]
    spec = importlib.util.spec_from_file_location("pimlab_crd_cases", Path(__file__).with_name("crd_cases.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules["pimlab_crd_cases"] = module  # dataclasses look their module up while it loads
    spec.loader.exec_module(module)
    return module


cases = _load_cases()


def test_committed_crds_are_fresh():
    stale = crdgen.stale_files(ROOT / "crds")
    assert not stale, f"crds/ is stale, run `make crds` (or `pimlab crds`): {stale}"


def test_no_extra_crd_files():
    shipped = {path.name for path in (ROOT / "crds").glob("*.yaml")}
    assert shipped == set(crdgen.rendered_files())


def test_generation_is_deterministic():
    assert crdgen.rendered_files() == crdgen.rendered_files()


def _nodes(schema: dict[str, Any], path: str = ""):
    yield path, schema
    for name, child in schema.get("properties", {}).items():
        yield from _nodes(child, f"{path}.{name}")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from _nodes(schema["additionalProperties"], f"{path}[*]")
    if "items" in schema:
        yield from _nodes(schema["items"], f"{path}[]")


@pytest.mark.parametrize("resource", KINDS, ids=lambda r: r.__name__)
def test_schema_is_structural(resource):
    root = crdgen.crd(resource)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for path, node in _nodes(root):
        assert "type" in node or node.get("x-kubernetes-int-or-string"), f"{path}: no type"
        for forbidden in ("$ref", "$defs", "title", "const", "oneOf", "allOf", "uniqueItems", "propertyNames"):
            assert forbidden not in node, f"{path}: {forbidden}"
        assert not ("properties" in node and "additionalProperties" in node), path
        assert node.get("default", "absent") is not None, f"{path}: null default"
        for bound in ("exclusiveMinimum", "exclusiveMaximum"):
            assert isinstance(node.get(bound, True), bool), f"{path}: numeric {bound}"
        if node.get("x-kubernetes-preserve-unknown-fields"):
            pytest.fail(f"{path}: free-form field in a schema that should be fully declared")
        if path.startswith(".status"):
            assert "default" not in node, f"{path}: status fields carry no defaults"
        if path not in ("", ".metadata") and not path.endswith(("[*]", "[]")):
            assert node.get("description"), f"{path}: no description for kubectl explain"


@pytest.mark.parametrize("resource", KINDS, ids=lambda r: r.__name__)
def test_crd_names_columns_and_status(resource):
    crd = crdgen.crd(resource)
    names = crd["spec"]["names"]
    version = crd["spec"]["versions"][0]
    assert names["categories"] == ["pimlab"]
    assert names["shortNames"]
    assert version["subresources"] == {"status": {}}
    columns = {column["name"]: column for column in version["additionalPrinterColumns"]}
    assert columns["Ready"]["jsonPath"] == '.status.conditions[?(@.type=="Ready")].status'
    assert columns["Message"]["priority"] == 1
    assert "Age" in columns
    status = version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
    for common in ("observedGeneration", "conditions", "phase", "phaseReason"):
        assert common in status
    condition = status["conditions"]["items"]["properties"]
    assert {"type", "status", "reason", "message", "observedGeneration", "lastTransitionTime"} <= set(condition)


STATUS_FIELDS = {
    "Lab": {"endpoints", "shardMapVersion", "readyServices", "services"},
    "Shard": {"currentPrimary", "targetPrimary", "replicas", "failoverCount", "lastFailover", "failoverHistory"},
    "PersonaLoad": {"startedAt", "completedAt", "summary", "jobName", "pods", "recentRuns", "lastScheduleTime"},
    "ChaosExperiment": {"plannedTargets", "timeline", "recoverySeconds", "verdict", "abortReason"},
    "SLO": {"generatedObjects", "errorBudget"},
    # the shape `pimlab report drill` reads
    "Drill": {"startedAt", "finishedAt", "deadline", "window", "load", "injections", "timeline", "failovers", "ledger",
              "recovery", "budgets", "latency", "hypotheses", "verdict", "score", "reason", "message"},
}


@pytest.mark.parametrize("kind", STATUS_FIELDS)
def test_status_declares_what_the_operator_writes(kind):
    status = crdgen.crd(BY_KIND[kind])["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
    assert STATUS_FIELDS[kind] <= set(status["properties"])


def _scalar_defaults(model: type[BaseModel], prefix: str = ""):
    """(path, default) for every field with a plain default, recursing into nested models."""
    for name, info in model.model_fields.items():
        alias = info.alias or name
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield from _scalar_defaults(annotation, f"{prefix}.{alias}")
        elif info.default is not None and not info.is_required() and info.default_factory is None:
            yield f"{prefix}.{alias}", info.default


@pytest.mark.parametrize("resource", KINDS, ids=lambda r: r.__name__)
def test_schema_defaults_equal_model_defaults(resource):
    spec_model = resource.model_fields["spec"].annotation
    schema = crdgen.model_schema(spec_model)
    for path, default in _scalar_defaults(spec_model):
        node = schema
        for part in path.strip(".").split("."):
            node = node["properties"][part]
        assert node.get("default") == default, path


def test_nested_object_defaults_apply_like_pydantic():
    schema = crdgen.model_schema(Lab.model_fields["spec"].annotation)
    services = schema["properties"]["services"]["properties"]
    assert services["gateway"]["default"] == {"replicas": 2}
    assert services["billing"]["default"] == {"replicas": 1}


# ---- API.md's samples, as written there (timestamps made concrete) ------------------------

API_SAMPLES = """
apiVersion: pim-sre.lab/v1alpha1
kind: Lab
metadata: {name: pim, namespace: lab}
spec:
  image: ghcr.io/pim-sre/lab:0.1.0
  shardSelector: {matchLabels: {lab: pim}}
  services:
    gateway: {replicas: 2, autoscaling: {minReplicas: 2, maxReplicas: 6, targetCPU: 70}}
    patient: {replicas: 2}
    encounter: {replicas: 2}
    billing: {replicas: 1}
    admin: {replicas: 1}
    outboxRelay: {replicas: 1}
    projectionWorker: {replicas: 1}
  auth: {issuer: https://idp.lab.local, audience: pim-api, jwksUri: https://idp.lab.local/jwks}
  observability:
    prometheusUrl: http://prometheus.monitoring:9090
    otlpEndpoint: http://tempo.monitoring:4317
    grafana: {url: http://grafana.monitoring, apiTokenSecretRef: {name: grafana-token, key: token}}
---
kind: Shard
metadata: {name: shard-00, namespace: lab, labels: {lab: pim}}
spec:
  ordinal: 0
  slots: {start: 0, end: 341}
  replicas: 3
  synchronousReplicas: 1
  image: mcr.microsoft.com/mssql/server:2022-latest
  edition: Developer
  storage: {size: 20Gi, storageClassName: standard}
  resources: {requests: {cpu: "1", memory: 2Gi}, limits: {memory: 4Gi}}
  failover: {automatic: true, unhealthyAfterSeconds: 30, allowDataLoss: false}
  primary: ""
  credentialsSecretRef: {name: ""}
status:
  phase: Ready
  phaseReason: Availability group healthy
  currentPrimary: shard-00-0
  targetPrimary: shard-00-0
  replicas: [{pod: shard-00-0, role: primary, ready: true, synchronizationState: SYNCHRONIZED}]
  failoverCount: 1
  lastFailover: {from: shard-00-0, to: shard-00-1, reason: PrimaryUnhealthy, startedAt: "2025-01-01T10:00:00Z", completedAt: "2025-01-01T10:00:04Z", durationSeconds: 4.2}
---
kind: PersonaLoad
metadata: {name: peak-clinic, namespace: lab}
spec:
  target: {labRef: pim}
  personas:
    - {name: patient, weight: 70, journeys: [bookEncounter, reviewEncounter, checkBilling], thinkTime: {min: 1s, max: 5s}}
    - {name: clinician, weight: 25, journeys: [documentEncounter, reviewEncounter]}
    - {name: admin, weight: 5, journeys: [submitClaim, readKpis]}
  population: {patients: 50000, seed: 42}
  profile: {pattern: diurnal, rate: 200, peakRate: 800, duration: 30m, rampUp: 2m}
  maxInFlight: 2000
  parallelism: 2
  failurePressure: {retries: {max: 3, backoff: 200ms, jitter: true}, invalidRequestRatio: 0.02, timeout: 2s, bursts: {every: 5m, factor: 4, length: 20s}}
  thresholds: {p95: 300ms, errorRatio: 0.01}
  schedule: ""
---
kind: ChaosExperiment
metadata: {name: sql-failover-drill, namespace: lab}
spec:
  action: sqlFailover
  target: {shardRef: shard-00}
  blastRadius: {maxPods: 1, maxPercent: 34}
  duration: 5m
  dryRun: true
  reference: ADR-012
  abortIf: [{sloRef: encounter-booking-availability, burnRateAbove: 14.4}]
  schedule: ""
status:
  phase: Completed
  plannedTargets: [shard-00-0]
  timeline: [{time: "2025-01-01T10:00:00Z", event: Injected, detail: deleted shard-00-0}]
  recoverySeconds: 4.2
  verdict: Passed
---
kind: SLO
metadata: {name: encounter-booking-availability, namespace: lab}
spec:
  service: encounter
  journey: bookEncounter
  sli:
    ratio:
      errors: sum(rate(http_requests_total{route="/encounters",method="POST",status=~"5.."}[{{window}}]))
      total: sum(rate(http_requests_total{route="/encounters",method="POST"}[{{window}}]))
  objective: 99.9
  window: 30d
  alerting:
    page: {enabled: true, labels: {severity: page}, for: 2m}
    ticket: {enabled: true, labels: {severity: ticket}}
    runbookUrl: https://git.lab.local/pim/docs/runbooks/05_encounter-write.md
  grafana: {folder: SLOs}
status:
  errorBudget: {remaining: 0.83, burnRate1h: 0.4, burnRate6h: 0.3, evaluatedAt: "2025-01-01T10:00:00Z"}
"""


def test_api_md_samples_parse():
    parsed = [BY_KIND[doc["kind"]].model_validate(doc) for doc in yaml.safe_load_all(API_SAMPLES)]
    lab, shard, load, chaos, slo = parsed
    assert lab.spec.services.gateway.autoscaling.target_cpu == 70
    assert shard.spec.synchronous_replica_count() == 1 and shard.status.last_failover.from_ == "shard-00-0"
    assert [p.weight for p in load.spec.personas] == [70, 25, 5]
    assert chaos.spec.dry_run and chaos.status.verdict == "Passed"
    assert slo.status.error_budget.burn_rate_1h == 0.4
    # Round trip: what the operator writes back uses the wire names.
    assert shard.to_k8s()["status"]["lastFailover"]["from"] == "shard-00-0"
    assert slo.to_k8s()["status"]["errorBudget"]["burnRate1h"] == 0.4


def _sample_objects():
    for path in sorted((ROOT / "samples").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("apiVersion") == "pim-sre.lab/v1alpha1":
                yield pytest.param(doc, id=f"{path.name}:{doc['kind']}/{doc['metadata']['name']}")


@pytest.mark.parametrize("doc", list(_sample_objects()))
def test_samples_parse(doc):
    BY_KIND[doc["kind"]].model_validate(doc)


def test_samples_cover_the_lab():
    docs = [p.values[0] for p in _sample_objects()]
    names = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert ("Lab", "pim") in names
    assert {("Shard", f"shard-0{i}") for i in range(3)} <= names
    assert {("PersonaLoad", n) for n in ("peak-clinic", "billing-burst", "overnight-processing")} <= names
    assert {("ChaosExperiment", n) for n in ("pod-kill", "sql-failover-drill")} <= names
    journeys = {d["spec"].get("journey") for d in docs if d["kind"] == "SLO"}
    assert journeys == {"bookEncounter", "reviewEncounter", "checkBilling", "documentEncounter", "submitClaim", "readKpis"}
    slots = sorted((d["spec"]["slots"]["start"], d["spec"]["slots"]["end"]) for d in docs if d["kind"] == "Shard")
    assert slots[0][0] == 0 and slots[-1][1] == 1023
    assert all(a[1] + 1 == b[0] for a, b in zip(slots, slots[1:])), "slot ranges must tile 0..1023"
    assert all(d["metadata"]["namespace"] == "lab" for d in docs)


def _variant_objects():
    """The samples' variants in subfolders: samples/postgres/ (the Shards on the real node) and
    samples/tour/ (what the README's tour applies by hand)."""
    for path in sorted((ROOT / "samples").glob("*/*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("apiVersion") == "pim-sre.lab/v1alpha1":
                yield pytest.param(doc, id=f"{path.parent.name}/{path.name}:{doc['kind']}/{doc['metadata']['name']}")


@pytest.mark.parametrize("doc", list(_variant_objects()))
def test_sample_variants_parse(doc):
    BY_KIND[doc["kind"]].model_validate(doc)
    assert doc["metadata"]["namespace"] == "lab"


def test_the_tours_load_is_small_and_feeds_every_sample_slo():
    """The README's tour runs it beside the lab on one 2-core node and then reads every SLO's
    budget: short, modest, aimed at the sample Lab, and every journey an SLO watches is in it."""
    loads = [d for d in yaml.safe_load_all((ROOT / "samples/tour/personaload.yaml").read_text()) if d]
    assert [d["kind"] for d in loads] == ["PersonaLoad"]
    load = BY_KIND["PersonaLoad"].model_validate(loads[0]).spec
    assert load.target.lab_ref == "pim" and load.schedule is None and load.parallelism == 1
    assert duration_seconds(load.profile.duration) <= 120 and load.profile.rate <= 10
    journeys = {j for persona in load.personas for j in persona.journeys or []}
    watched = {p.values[0]["spec"]["journey"] for p in _sample_objects() if p.values[0]["kind"] == "SLO"}
    assert watched <= journeys, watched - journeys


@pytest.mark.parametrize("kind", cases.VALID)
def test_valid_cases_parse(kind):
    BY_KIND[kind].model_validate(cases.VALID[kind])


@pytest.mark.parametrize("case", [c for c in cases.INVALID if c.pydantic_refuses], ids=lambda c: c.id)
def test_models_refuse_what_the_apiserver_refuses(case):
    """The CEL rules have Python twins; this keeps the two from drifting apart."""
    with pytest.raises(ValidationError):
        BY_KIND[case.kind].model_validate(case.object())


def test_enough_invalid_cases():
    assert len({case.id for case in cases.INVALID}) == len(cases.INVALID) >= 25


def test_cli_check_reports_stale(tmp_path):
    from pimlab_operator.cli import add_commands
    import argparse

    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["crds", "--out-dir", str(tmp_path)])
    assert args.func(args) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(crdgen.rendered_files())
    (tmp_path / "slos.pim-sre.lab.yaml").write_text("stale\n")
    check = parser.parse_args(["crds", "--out-dir", str(tmp_path), "--check"])
    assert check.func(check) == 1


def test_public_model_names():
    from pimlab_operator.chaos.model import ChaosExperimentSpec
    from pimlab_operator.lab.model import LabSpec
    from pimlab_operator.personaload.model import PersonaLoadSpec
    from pimlab_operator.shard.model import ShardSpec
    from pimlab_operator.slo.model import SLOSpec

    for resource, spec in ((Lab, LabSpec), (Shard, ShardSpec), (PersonaLoad, PersonaLoadSpec),
                           (ChaosExperiment, ChaosExperimentSpec), (SLO, SLOSpec)):
        assert resource.model_fields["spec"].annotation is spec

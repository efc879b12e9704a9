"""Every kind's status, as the operator writes it, against the CRD's status schema on a real
apiserver: a status field the schema lacks, or a value it refuses, fails here.

For each sample object (samples/, the golden inputs): create it in a fresh namespace, render
the statuses its status functions produce for plausible observed children (pods, Jobs, a
failover pass, a Prometheus reading), and send each exactly as `reconcile.write_status` does (a
server-side apply of the status subresource) with `dryRun=All` and `fieldValidation=Strict`:
the apiserver checks it against the schema and stores nothing. A structural schema would
otherwise prune an unknown field without a word.

    PYTHONPATH=$PWD:$PWD/operator .venv/bin/python -m pytest -q tests/cluster/test_status_schema.py
"""

from __future__ import annotations

import copy
import random
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable

import pytest
import yaml

from api_services.catalog import COMPONENTS
from pimlab_load.report import Recorder, to_wire
from pimlab_operator import conditions, kube, reconcile
from pimlab_operator.chaos import status as chaos_status
from pimlab_operator.conditions import Condition
from pimlab_operator.kinds import BY_NAME
from pimlab_operator.lab import desired as lab_desired
from pimlab_operator.lab import status as lab_status
from pimlab_operator.personaload import status as personaload_status
from pimlab_operator.schema import API_VERSION, StatusBase
from pimlab_operator.shard import desired as shard_desired
from pimlab_operator.shard import status as shard_status
from pimlab_operator.shard.failover import Decision, Memory, Observation
from pimlab_operator.shard.failover_pass import PassResult
from pimlab_operator.shard.model import FailoverRecord
from pimlab_operator.shard.rollout import Rollout
from pimlab_operator.slo import desired as slo_desired
from pimlab_operator.slo import status as slo_status

ROOT = Path(__file__).resolve().parents[2]
AT = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)
STAMP = "2026-12-01T12:00:00Z"
#: One rendered status: (what it shows, the status the kind's function returns, its conditions).
Case = tuple[str, object, list[Condition]]


def samples(kind: str) -> list[dict]:
    found = []
    for path in sorted((ROOT / "samples").glob("*.yaml")):
        found += [d for d in yaml.safe_load_all(path.read_text()) if d and d["kind"] == kind]
    return found


def sent(body: dict, status: object, wanted: list[Condition]) -> dict:
    """The status body `write_status` sends. A status model goes through `reconcile.status_body`.
    A dict is what the PersonaLoad, ChaosExperiment and SLO status functions return until they
    build their models: it is sent as written, with observedGeneration and the merged conditions
    (never through the model, which would drop the very fields this test looks for)."""
    if isinstance(status, StatusBase):
        return reconcile.status_body(body, status, wanted)
    generation = body["metadata"].get("generation", 1)
    merged = conditions.merge((body.get("status") or {}).get("conditions") or [], wanted, generation)
    return {**status, "observedGeneration": generation, "conditions": merged}


def dry_run_status(body: dict, status: dict) -> dict:
    """A server-side apply of `status` through the status subresource, validated strictly and
    not stored; the object as it would be. Raises kube.ApiError when the apiserver refuses."""
    meta = body["metadata"]
    plural = BY_NAME[body["kind"]].plural
    patch = {"apiVersion": body["apiVersion"], "kind": body["kind"], "status": status,
             "metadata": {"name": meta["name"], "namespace": meta["namespace"]}}
    return kube.request("PATCH", f"/apis/{API_VERSION}/namespaces/{meta['namespace']}/{plural}/{meta['name']}/status",
                        query={"fieldManager": "pimlab-tests", "force": "true", "dryRun": "All",
                               "fieldValidation": "Strict"},
                        body=patch, content_type="application/apply-patch+yaml")


def spec_of(body: dict):
    return BY_NAME[body["kind"]].spec_model.model_validate(body["spec"])


def with_status(body: dict, status: dict) -> dict:
    return {**copy.deepcopy(body), "status": status}


# --------------------------------------------------------------------------------------------
# Shard
# --------------------------------------------------------------------------------------------

def _shard_pods(name: str, ready: bool = True, unschedulable: str | None = None) -> list[dict]:
    pods = []
    for i in range(3):
        conditions = [{"type": "Ready", "status": "True" if ready else "False"}]
        if unschedulable:
            conditions.append({"type": "PodScheduled", "status": "False", "message": unschedulable})
        pods.append({"metadata": {"name": f"{name}-{i}", "labels": {
            **shard_desired.selector(name), shard_desired.ROLE_LABEL: "primary" if i == 0 else "secondary"}},
            "status": {"phase": "Running" if ready else "Pending", "conditions": conditions}})
    return pods


def _shard_pass(name: str, completed: bool) -> PassResult:
    observations = [Observation(f"{name}-0", False),
                    Observation(f"{name}-1", True, "primary", True, 5000),
                    Observation(f"{name}-2", True, "standby", True, 4990, True, f"{name}-1", True)]
    if completed:
        record = FailoverRecord(from_=f"{name}-0", to=f"{name}-1", reason="PrimaryUnhealthy", planned=False,
                                data_loss=None, primary_lost_at=AT, started_at=AT + timedelta(seconds=30),
                                completed_at=AT + timedelta(seconds=31.5), duration_seconds=1.5, outage_seconds=31.5)
        return PassResult(Decision(phase="Ready", reason="Healthy", target_primary=f"{name}-1"), observations,
                          Memory(f"{name}-1"), record)
    return PassResult(Decision(phase="FailingOver", reason="Promoting", message="promoting the standby",
                               target_primary=f"{name}-1"), observations,
                      Memory(f"{name}-0", AT, AT + timedelta(seconds=30), f"{name}-0", "PrimaryUnhealthy"))


def shard_cases(body: dict) -> list[Case]:
    name, spec = body["metadata"]["name"], spec_of(body)
    rolling = Rollout(revision=f"{name}-7d9c", updated=2, outdated=(f"{name}-0",), reason="SwitchingOver",
                      message=f"switching over to {name}-2 before restarting {name}-0", switchover_to=f"{name}-2")
    cases = [
        ("pods pending, volumes unbound, Secret lost",
         *shard_status.shard_status(body, spec, {}, _shard_pods(name, False, "unbound PersistentVolumeClaims"),
                                    credentials_missing=True)),
        ("availability group not bootstrapped, a rollout under way",
         *shard_status.shard_status(body, spec, {}, _shard_pods(name), rollout=rolling)),
        ("no instance answers",
         *shard_status.failover_status(body, spec, {}, _shard_pods(name), None, {}, AT,
                                       unreachable_reason="the pods run on simulated (kwok) nodes")),
    ]
    failing = shard_status.failover_status(body, spec, {}, _shard_pods(name), _shard_pass(name, False), {}, AT)
    cases.append(("a failover in progress", *failing))
    during = with_status(body, sent(body, *failing))
    details = {f"{name}-2": {"synchronization_state": "streaming/quorum", "synchronous_commit": True, "lag_bytes": 10}}
    cases.append(("a failover completed, with history and replica details",
                  *shard_status.failover_status(during, spec, {}, _shard_pods(name), _shard_pass(name, True),
                                                details, AT + timedelta(seconds=32), rollout=rolling)))
    return cases


# --------------------------------------------------------------------------------------------
# Lab
# --------------------------------------------------------------------------------------------

def _shards_as_written() -> list[dict]:
    """The sample Shards with the statuses their own functions give: shard-00 Ready after a
    failover pass, the others Pending."""
    shards = []
    for shard in samples("Shard"):
        shard = {**shard, "metadata": {**shard["metadata"], "generation": 1}}
        name = shard["metadata"]["name"]
        if name.endswith("-00"):
            observations = [Observation(f"{name}-0", True, "primary", True, 10)] + [
                Observation(f"{name}-{i}", True, "standby", True, 10, True, f"{name}-0", True) for i in (1, 2)]
            result = PassResult(Decision(phase="Ready", reason="Healthy", target_primary=f"{name}-0"),
                                observations, Memory(f"{name}-0"))
            status = shard_status.failover_status(shard, spec_of(shard), {}, _shard_pods(name), result, {}, AT)
        else:
            status = shard_status.shard_status(shard, spec_of(shard), {}, _shard_pods(name, False))
        shards.append(with_status(shard, sent(shard, *status)))
    return shards


def lab_cases(body: dict) -> list[Case]:
    spec, namespace = spec_of(body), body["metadata"]["namespace"]
    shards = _shards_as_written()
    shard_map = lab_desired.shard_map(shards, namespace, None)
    ready = {c.name: {"spec": {"replicas": 2}, "status": {"readyReplicas": 2}} for c in COMPONENTS}
    return [
        ("rolling out", *lab_status.lab_status(body, spec, shard_map, {}, shards)),
        ("services up, shards not Ready", *lab_status.lab_status(body, spec, shard_map, ready, shards)),
        ("slots uncovered", *lab_status.lab_status(body, spec, lab_desired.shard_map(shards[:1], namespace, None),
                                                   ready, shards)),
    ]


# --------------------------------------------------------------------------------------------
# PersonaLoad, ChaosExperiment, SLO: adapters over their current status functions (dicts).
# When their status functions move to `<kind>/status.py` and return status models, point the
# calls below there; `sent` takes either.
# --------------------------------------------------------------------------------------------

def _engine_report(seed: int) -> Recorder:
    rng = random.Random(seed)
    rec = Recorder()
    for _ in range(200):
        latency = rng.lognormvariate(10, 0.5)
        rec.record(rng.choice(("patient", "clinician")), "bookEncounter", "shard-00", "200", rng.random() < 0.01,
                   latency, latency * 0.9, 200)
    rec.elapsed, rec.scheduled, rec.journeys = 10.0, 200, 200
    return rec


def _engine_pod(job: str, index: int, of: int) -> dict:
    terminated = {"exitCode": 0, "reason": "Completed", "message": to_wire(_engine_report(index), index, of)}
    return {"metadata": {"name": f"{job}-{index}-x", "creationTimestamp": STAMP,
                         "annotations": {"batch.kubernetes.io/job-completion-index": str(index)}},
            "status": {"phase": "Succeeded", "containerStatuses": [{"name": "engine", "state": {"terminated": terminated}}]}}


def _job(name: str, completions: int) -> dict:
    return {"metadata": {"name": name, "creationTimestamp": STAMP}, "spec": {"completions": completions},
            "status": {"startTime": STAMP, "completionTime": "2026-12-01T12:30:00Z", "active": 0,
                       "conditions": [{"type": "Complete", "status": "True", "reason": "Completed", "message": "",
                                       "lastTransitionTime": "2026-12-01T12:30:00Z"}]}}


def personaload_cases(body: dict) -> list[Case]:
    spec = spec_of(body)

    def status_of(*args):
        return personaload_status.personaload_status(body, spec, *args[1:])

    image = "ghcr.io/pim-sre/lab:0.1.0"
    job = _job(f"{body['metadata']['name'][:40]}-abc", 2)
    pods = [_engine_pod(job["metadata"]["name"], i, 2) for i in range(2)]
    cases = [("no image", *status_of(body, None, None, None, [])),
             ("a run finished with its summary", *status_of(body, image, job, None, pods))]
    if body["spec"].get("schedule"):
        cronjob = {"status": {"lastScheduleTime": STAMP}}
        cases.append(("scheduled, with its recent runs",
                      *status_of(body, image, job, cronjob, pods, [(job, pods)])))
    return cases


def _chaos_pods(body: dict) -> tuple[list[dict], dict | None]:
    target = body["spec"]["target"]
    if target.get("shardRef"):
        name = target["shardRef"]
        replicas = [{"pod": f"{name}-{i}", "role": "primary" if i == 0 else "secondary", "ready": True,
                     "streaming": True, "synchronousCommit": True, "lagBytes": i} for i in range(3)]
        shard = {"metadata": {"name": name}, "status": {"currentPrimary": f"{name}-0", "replicas": replicas}}
        labels: dict = {}
    else:
        shard, labels = None, (target.get("selector") or {}).get("matchLabels") or {}
        name = "pim-patient"
    pods = [{"metadata": {"name": f"{name}-{i}", "labels": labels, "creationTimestamp": STAMP},
             "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}} for i in range(3)]
    return pods, shard


def chaos_cases(body: dict) -> list[Case]:
    spec = spec_of(body)
    pods, shard = _chaos_pods(body)
    cases = [("a dry run planned", *_step(chaos_status.start(body, spec, pods, shard, at=STAMP)))]
    live = copy.deepcopy(body)
    live["spec"]["dryRun"] = False
    live_spec = spec_of(live)
    started = chaos_status.start(live, live_spec, pods, shard, at=STAMP)
    cases.append(("a run started", *_step(started)))
    injected = chaos_status.injected(started.status, "injected", at="2026-12-01T12:00:01Z")
    cases.append(("injected, recovering", *_step(injected)))
    cases.append(("aborted", *_step(chaos_status.abort(injected.status, "SLOBurning", "the SLO burns",
                                                        at="2026-12-01T12:00:02Z"))))
    return cases


def _step(step) -> tuple[object, list[Condition]]:
    return step.status, step.conditions


def slo_cases(body: dict) -> list[Case]:
    spec = spec_of(body)
    children = slo_desired.desired_children(body, spec, with_prometheus_rule=True)
    window = slo_desired.series(spec.window)
    reading = {"series": {slo_desired.series(w): 0.0005 for w in slo_desired.windows(spec)} | {
        window: 0.0004, "slo:error_budget:remaining_ratio": 0.6},
        "alerts": [{"state": "firing", "activeAt": STAMP, "labels": {
            "alertname": "SLOErrorBudgetBurnPage", "severity": "page", "long_window": "1h", "short_window": "5m",
            "slo": body["metadata"]["name"], "slo_namespace": body["metadata"]["namespace"]}}],
        "readAt": AT}
    budget = slo_status.budget_status(body, spec, reading, "http://prometheus.monitoring.svc:9090")
    status_of = slo_status.slo_status
    return [("rules generated, no Prometheus", *status_of(body, children, True, None)),
            ("no PrometheusRule CRD", *status_of(body, children, False, None)),
            ("an error budget read", *status_of(body, children, True, budget))]


CASES: dict[str, Callable[[dict], list[Case]]] = {
    "Lab": lab_cases, "Shard": shard_cases, "PersonaLoad": personaload_cases,
    "ChaosExperiment": chaos_cases, "SLO": slo_cases,
}
OBJECTS = [(kind, doc["metadata"]["name"]) for kind in CASES for doc in samples(kind)]


def created(cluster, kind: str, name: str, namespace: str) -> dict:
    doc = next(d for d in samples(kind) if d["metadata"]["name"] == name)
    doc["metadata"]["namespace"] = namespace
    cluster.apply(doc)
    return kube.get(API_VERSION, kind, name, namespace)


@pytest.mark.parametrize(("kind", "name"), OBJECTS, ids=[f"{k}-{n}" for k, n in OBJECTS])
def test_every_status_the_operator_writes_fits_the_crd_schema(cluster, crds_installed, namespace, kind, name):
    body = created(cluster, kind, name, namespace)
    refused = []
    cases = CASES[kind](body)
    assert cases, f"no status rendered for {kind} {name}"
    for what, status, wanted in cases:
        status_body = sent(body, status, wanted)
        try:
            answer = dry_run_status(body, status_body)
        except kube.ApiError as error:
            refused.append(f"{what}: {error}")
            continue
        missing = set(status_body) - set(answer.get("status") or {})
        if missing:
            refused.append(f"{what}: the apiserver dropped {sorted(missing)}")
    assert not refused, f"{kind} {name}:\n" + "\n".join(refused)


def assert_refused(error: kube.ApiError, field: str) -> None:
    assert error.status in (422, 500), error
    assert "field not declared in schema" in error.body and field in error.body, error.body


def test_a_status_field_the_schema_lacks_is_refused(cluster, crds_installed, namespace):
    """The check above can fail: strict validation refuses an unknown field, where a plain
    write would have it pruned silently. Server-side apply (how the operator writes status)
    reports a field its schema lacks as HTTP 500 "field not declared in schema" (the apiserver
    cannot build the typed patch), other writes as 422: either way nothing is written."""
    body = created(cluster, "Lab", samples("Lab")[0]["metadata"]["name"], namespace)
    _, status, wanted = lab_cases(body)[0]
    dry_run_status(body, sent(body, status, wanted))  # as rendered: accepted
    with pytest.raises(kube.ApiError) as refused:
        dry_run_status(body, {**sent(body, status, wanted), "notInTheSchema": "x"})
    assert_refused(refused.value, "notInTheSchema")
    shard = created(cluster, "Shard", samples("Shard")[0]["metadata"]["name"], namespace)
    _, status, wanted = shard_cases(shard)[0]
    nested = sent(shard, status, wanted)
    nested["replicas"][0]["lagSecondz"] = 1.0
    with pytest.raises(kube.ApiError) as refused:
        dry_run_status(shard, nested)
    assert_refused(refused.value, "lagSecondz")

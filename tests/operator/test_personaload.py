"""The PersonaLoad's pure functions: config, Job/CronJob, and the run's status merged from the
engine pods' reports, with a reason for every way a run can go wrong."""

from __future__ import annotations

import copy
import json
import random

from cr_samples import by, sample, spec_of

from pimlab_load.config import from_spec
from pimlab_load.ledger import LedgerResult, Outage, Slowest
from pimlab_load.report import Recorder, summary, to_wire
from pimlab_operator import crdgen
from pimlab_operator.personaload import desired as personaload
from pimlab_operator.personaload import status as run_status
from pimlab_operator.personaload.model import PersonaLoad

PEAK = sample("PersonaLoad", "peak-clinic")
NIGHTLY = sample("PersonaLoad", "overnight-processing")
LAB = {"spec": {"image": "ghcr.io/pim-sre/lab:0.1.0"}}


def report(seed: int, n: int = 500, slow: float = 1.0, errors: float = 0.0, **counts) -> Recorder:
    rng = random.Random(seed)
    rec = Recorder()
    for _ in range(n):
        latency = rng.lognormvariate(10, 0.5) * slow
        rec.record(rng.choice(("patient", "clinician", "admin")), rng.choice(("bookEncounter", "readKpis")),
                   rng.choice(("shard-00", "shard-01", "shard-02")), "200", rng.random() < errors,
                   latency, latency * 0.9, 200)
    rec.elapsed = 10.0
    rec.scheduled = rec.journeys = n
    for key, value in counts.items():
        setattr(rec, key, value)
    return rec


def engine_pod(index: int, message: str | None = None, exit_code: int = 0, reason: str = "Completed",
               phase: str | None = None, **status) -> dict:
    terminated = {"exitCode": exit_code, "reason": reason, **({"message": message} if message else {})}
    return {"metadata": {"name": f"peak-clinic-abc-{index}-x", "creationTimestamp": "2025-01-01T00:00:00Z",
                         "annotations": {"batch.kubernetes.io/job-completion-index": str(index)}},
            "status": {"phase": phase or ("Succeeded" if exit_code == 0 else "Failed"),
                       "containerStatuses": [{"name": "engine", "state": {"terminated": terminated}}], **status}}


def waiting_pod(index: int, **status) -> dict:
    return {"metadata": {"name": f"peak-clinic-abc-{index}-y", "creationTimestamp": "2025-01-01T00:00:01Z",
                         "annotations": {"batch.kubernetes.io/job-completion-index": str(index)}},
            "status": {"phase": "Pending", **status}}


def job(*conditions: str, active: int = 0, completions: int = 2, name: str = "peak-clinic-abc") -> dict:
    return {"metadata": {"name": name, "creationTimestamp": "2025-01-01T00:00:00Z"},
            "spec": {"completions": completions},
            "status": {"startTime": "2025-01-01T00:00:00Z", "active": active,
                       "completionTime": "2025-01-01T00:30:00Z" if "Complete" in conditions else None,
                       "conditions": [{"type": c, "status": "True", "reason": "DeadlineExceeded" if c == "Failed" else "X",
                                       "message": "m", "lastTransitionTime": "2025-01-01T00:30:00Z"}
                                      for c in conditions]}}


def status_of(body, the_job, pods, **kwargs):
    """The status as written (dumped by alias) and the conditions by type."""
    status, conditions = run_status.personaload_status(body, spec_of(body), "img", the_job, None, pods, **kwargs)
    return status.to_k8s(), {c.type: c for c in conditions}


def declared(value, schema: dict, path: str = ".status") -> None:
    """Every key written is in the CRD schema: the apiserver prunes undeclared fields."""
    if isinstance(value, dict):
        props = schema.get("properties")
        for key, item in value.items():
            if props is not None:
                assert key in props, f"{path}.{key} is not declared"
                declared(item, props[key], f"{path}.{key}")
            else:
                assert "additionalProperties" in schema, f"{path} takes no keys"
                declared(item, schema["additionalProperties"], f"{path}.{key}")
    elif isinstance(value, list):
        for item in value:
            declared(item, schema["items"], f"{path}[]")


STATUS_SCHEMA = crdgen.crd(PersonaLoad)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]


def test_config_map_spells_out_journeys_and_the_indexed_job_runs_the_engine():
    image = personaload.engine_image(spec_of(PEAK), LAB)
    children = personaload.desired_children(PEAK, spec_of(PEAK), image)
    config = json.loads(by(children, "ConfigMap", "peak-clinic-config")["data"]["config.json"])
    assert config["parallelism"] == 2 and config["profile"]["peakRate"] == 800
    assert all(p["journeys"] for p in config["personas"])
    name = personaload.job_name(PEAK, spec_of(PEAK), image)
    assert name.startswith("peak-clinic-") and len(name) == len("peak-clinic-") + 8
    spec = by(children, "Job", name)["spec"]
    assert spec["parallelism"] == 2 and spec["completions"] == 2 and spec["completionMode"] == "Indexed"
    assert spec["backoffLimitPerIndex"] == 0 and "backoffLimit" not in spec  # a failed share is never re-sent
    pod = spec["template"]["spec"]
    container = pod["containers"][0]
    assert container["image"] == "ghcr.io/pim-sre/lab:0.1.0"
    assert container["args"] == ["load", "run", "--config", "/etc/pim/load/config.json"]
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"
    env = {e["name"]: e for e in container["env"]}
    assert env["PIM_LOAD_TARGET_URL"]["value"] == "http://pim-gateway.lab.svc"
    assert env["PIM_LOAD_PARALLELISM"]["value"] == "2"
    assert "controller-uid" in env["PIM_LOAD_RUN_ID"]["valueFrom"]["fieldRef"]["fieldPath"]
    assert container["ports"] == [{"name": "metrics", "containerPort": 9464}]
    assert pod["terminationGracePeriodSeconds"] == 12  # the client timeout (2s) + 10s to report
    assert all(c["metadata"]["ownerReferences"][0]["kind"] == "PersonaLoad" for c in children)


def test_a_persona_without_journeys_runs_its_standard_ones():
    short = copy.deepcopy(PEAK)
    short["spec"]["personas"] = [{"name": "patient", "weight": 3}, {"name": "admin", "weight": 1}]
    children = personaload.desired_children(short, spec_of(short), "img")
    config = json.loads(by(children, "ConfigMap", "peak-clinic-config")["data"]["config.json"])
    assert config["personas"][0]["journeys"] == ["registerPatient", "bookEncounter", "reviewEncounter", "checkBilling"]
    assert config["personas"][1]["journeys"] == ["submitClaim", "readKpis"]


def test_the_ledger_reaches_the_engine_through_its_config_and_a_spec_without_it_is_unchanged():
    with_ledger = copy.deepcopy(PEAK)
    with_ledger["spec"]["ledger"] = {"enabled": True}
    children = personaload.desired_children(with_ledger, spec_of(with_ledger), "img")
    config = json.loads(by(children, "ConfigMap", "peak-clinic-config")["data"]["config.json"])
    assert config["ledger"] == {"enabled": True, "verify": True}
    engine = from_spec(config, {"PIM_LOAD_TARGET_URL": "http://gateway"})
    assert engine.ledger is True and engine.verify is True
    plain = json.loads(by(personaload.desired_children(PEAK, spec_of(PEAK), "img"), "ConfigMap",
                          "peak-clinic-config")["data"]["config.json"])
    assert "ledger" not in plain and from_spec(plain, {"PIM_LOAD_TARGET_URL": "http://gateway"}).ledger is False


def test_status_carries_the_pods_ledgers_outages_and_slowest_request_merged():
    pods = []
    for index, (lost, slow_ms) in enumerate(((2, 900.0), (1, 1400.0))):
        rec = report(10 + index)
        rec.ledger = LedgerResult(100, 98 - lost, lost, 2, [f"enc-0001-{index:032x}"] * lost,
                                  {"shard-00": [60, lost], "shard-01": [40, 0]},
                                  {"shard-00": (True, "120 events, chain intact"), "shard-01": (True, "80 events, chain intact")})
        rec.outages = [Outage("shard-00", 1.8e9 + index, 1.8e9 + 6 + index, 6.0, 4)]
        rec.slowest = Slowest(f"{index:032x}", "bookEncounter", "POST /encounters", slow_ms, 1.8e9)
        pods.append(engine_pod(index, to_wire(rec, index, 2)))
    status, _ = status_of(PEAK, job("Complete"), pods)
    ledger = status["ledger"]
    assert (ledger["acknowledged"], ledger["verified"], ledger["lost"], ledger["unverifiable"]) == (200, 193, 3, 4)
    assert len(ledger["lostSample"]) == 3
    assert ledger["shards"] == [{"shard": "shard-00", "acknowledged": 120, "lost": 3},
                                {"shard": "shard-01", "acknowledged": 80, "lost": 0}]
    assert all(chain["ok"] for chain in ledger["auditChains"])
    # the two pods saw one outage of shard-00 (overlapping): the longest any client waited
    assert status["writeOutages"] == [{"shard": "shard-00", "start": "2027-01-15T08:00:00Z",
                                       "end": "2027-01-15T08:00:07Z", "seconds": 7.0, "failedWrites": 8}]
    assert status["slowest"] == {"traceId": f"{1:032x}", "journey": "bookEncounter", "step": "POST /encounters",
                                 "ms": 1400.0, "at": "2027-01-15T08:00:00Z"}
    declared(status, STATUS_SCHEMA)


def test_editing_the_spec_names_a_new_job():
    """A Job's pod template is immutable: an edit is a new run under a new name (the old Job
    leaves the desired set and is pruned)."""
    edited = copy.deepcopy(PEAK)
    edited["spec"]["profile"]["rate"] = 300
    old, new = personaload.job_name(PEAK, spec_of(PEAK), "img"), personaload.job_name(edited, spec_of(edited), "img")
    assert old != new
    jobs = [c for c in personaload.desired_children(edited, spec_of(edited), "img") if c["kind"] == "Job"]
    assert [j["metadata"]["name"] for j in jobs] == [new]


def test_schedule_renders_a_cronjob_and_no_job():
    children = personaload.desired_children(NIGHTLY, spec_of(NIGHTLY), "img")
    assert [c["kind"] for c in children] == ["ConfigMap", "CronJob"]
    cron = by(children, "CronJob", "overnight-processing")["spec"]
    assert cron["schedule"] == "0 2 * * *" and cron["concurrencyPolicy"] == "Forbid"
    assert cron["jobTemplate"]["metadata"]["labels"][personaload.RUN_LABEL] == "overnight-processing"
    assert cron["jobTemplate"]["spec"]["completionMode"] == "Indexed"


def test_without_an_image_only_the_config_is_rendered_and_status_says_why():
    assert [c["kind"] for c in personaload.desired_children(PEAK, spec_of(PEAK), None)] == ["ConfigMap"]
    status, conditions = run_status.personaload_status(PEAK, spec_of(PEAK), None, None, None, [])
    assert status.phase == "Pending" and conditions[0].reason == "ImageUnknown"


def test_status_merges_the_pods_histograms_and_never_averages_percentiles():
    fast, slow = report(1), report(2, n=100, slow=20.0)
    pods = [engine_pod(0, to_wire(fast, 0, 2)), engine_pod(1, to_wire(slow, 1, 2))]
    unbounded = copy.deepcopy(PEAK)
    unbounded["spec"]["thresholds"] = {"errorRatio": 0.01}
    status, conditions = status_of(unbounded, job("Complete"), pods)
    assert status["phase"] == "Succeeded" and conditions["Ready"].status
    assert status["jobName"] == "peak-clinic-abc" and status["completedAt"] == "2025-01-01T00:30:00Z"
    result = status["summary"]
    assert result["requests"] == 600 and result["pods"] == 2
    # p99 of the combined samples: the slow pod's tail (its 100 samples are 1/6 of all)
    assert result["latencyMs"]["p99"] > 10 * summary(fast)["latencyMs"]["p99"]
    mean = (summary(fast)["latencyMs"]["p95"] + summary(slow)["latencyMs"]["p95"]) / 2
    assert abs(result["latencyMs"]["p95"] - mean) > 1  # not the average of the pods' p95s
    assert set(result["byPersona"]) == {"patient", "clinician", "admin"}
    assert set(result["byShard"]) == {"shard-00", "shard-01", "shard-02"}
    assert all("p99" in part["latencyMs"] for part in result["byJourney"].values())
    assert result["thresholds"] == [{"name": "errorRatio", "limit": 0.01, "observed": 0.0, "met": True}]
    assert status["pods"]["reported"] == 2 and status["pods"]["expected"] == 2
    assert conditions["SummaryValid"].reason == "SummaryMerged"
    declared(status, STATUS_SCHEMA)


def test_missed_thresholds_fail_the_run_with_the_verdicts():
    slow = report(3, slow=50.0)  # p95 far above the sample's 300ms
    pods = [engine_pod(0, to_wire(slow, 0, 2), exit_code=99, reason="Error"),
            engine_pod(1, to_wire(slow, 1, 2), exit_code=99, reason="Error")]
    status, conditions = status_of(PEAK, job("Failed"), pods)
    assert status["phase"] == "Failed" and conditions["Ready"].reason == "ThresholdsMissed"
    assert "p95" in conditions["Ready"].message and status["summary"]["thresholdsMet"] is False
    assert [v["met"] for v in status["summary"]["thresholds"] if v["name"] == "p95"] == [False]


def test_a_complete_job_without_reports_is_never_a_success():
    """kwok "completes" Job pods without running them: no report, no success."""
    status, conditions = status_of(PEAK, job("Complete"), [engine_pod(0), engine_pod(1)])
    assert status["phase"] == "Failed" and conditions["Ready"].reason == "NoResults"
    assert "summary" not in status and not conditions["SummaryValid"].status
    half, conditions = status_of(PEAK, job("Complete"), [engine_pod(0, to_wire(report(4), 0, 2)), engine_pod(1)])
    assert half["phase"] == "Failed" and conditions["Ready"].reason == "ResultsMissing"
    assert "[1]" in conditions["Ready"].message and half["summary"]["requests"] == 500


def test_a_malformed_termination_message_is_reported():
    status, conditions = status_of(PEAK, job("Complete"), [engine_pod(0, "Traceback (most recent call last): boom"),
                                                           engine_pod(1, to_wire(report(5), 1, 2))])
    assert status["phase"] == "Failed" and conditions["Ready"].reason == "ResultsMissing"
    assert conditions["SummaryValid"].reason == "TerminationMessageMalformed"


def test_a_failed_evicted_or_oom_killed_pod_names_its_reason():
    ok = engine_pod(1, to_wire(report(6), 1, 2))
    crashed = engine_pod(0, "Traceback: boom", exit_code=1, reason="Error")
    status, conditions = status_of(PEAK, job("Failed"), [crashed, ok])
    assert status["phase"] == "Failed" and conditions["Ready"].reason == "EngineFailed"
    assert "exited 1" in conditions["Ready"].message and conditions["Degraded"].status
    oom = engine_pod(0, exit_code=137, reason="OOMKilled")
    assert status_of(PEAK, job("Failed"), [oom, ok])[1]["Ready"].reason == "EngineOOMKilled"
    evicted = waiting_pod(0, phase="Failed", reason="Evicted", message="The node was low on resource: memory.")
    status, conditions = status_of(PEAK, job(active=1), [evicted, ok])
    assert status["phase"] == "Running" and conditions["Degraded"].reason == "PodEvicted"
    assert "low on resource" in conditions["Degraded"].message and not conditions["Ready"].status


def test_a_pod_that_never_schedules_or_starts_is_degraded_then_failed_at_the_deadline():
    unschedulable = waiting_pod(0, conditions=[{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                                "message": "0/2 nodes are available: 2 Insufficient cpu."}])
    status, conditions = status_of(PEAK, job(active=2), [unschedulable])
    assert status["phase"] == "Pending" and conditions["Degraded"].reason == "PodUnschedulable"
    assert "Insufficient cpu" in conditions["Degraded"].message and conditions["Progressing"].status
    status, conditions = status_of(PEAK, job("Failed"), [unschedulable])
    assert status["phase"] == "Failed" and conditions["Ready"].reason == "PodUnschedulable"
    pulling = waiting_pod(1, containerStatuses=[{"name": "engine", "state": {"waiting": {"reason": "ImagePullBackOff",
                                                                                       "message": "not found"}}}])
    assert status_of(PEAK, job(active=2), [pulling])[1]["Degraded"].reason == "EngineNotStarting"
    status, conditions = status_of(PEAK, job("Failed"), [])
    assert conditions["Ready"].reason == "NoResults"  # the deadline passed before any pod reported


def test_a_saturated_engine_is_degraded_with_advice():
    busy = report(7, dropped=40)
    pods = [engine_pod(0, to_wire(busy, 0, 2)), engine_pod(1, to_wire(report(8), 1, 2))]
    status, conditions = status_of(PEAK, job("Complete"), pods)
    assert status["summary"]["dropped"] == 40 and status["summary"]["saturated"]
    assert conditions["Degraded"].reason == "EngineSaturated" and "maxInFlight" in conditions["Degraded"].message


def test_a_cronjob_lists_its_last_runs():
    nightly_pods = lambda seed, name: [dict(engine_pod(0, to_wire(report(seed), 0, 1)),  # noqa: E731
                                            metadata={"name": f"{name}-0", "creationTimestamp": "2025-01-01T00:00:00Z",
                                                      "annotations": {"batch.kubernetes.io/job-completion-index": "0"}})]
    runs = [(job("Complete", completions=1, name=f"overnight-processing-{n}"), nightly_pods(n, f"r{n}"))
            for n in (3, 2, 1)]
    runs.append((job("Complete", completions=1, name="overnight-processing-0"), []))
    status, conditions = run_status.personaload_status(NIGHTLY, spec_of(NIGHTLY), "img", runs[0][0], {"status": {
        "lastScheduleTime": "2025-01-01T02:00:00Z"}}, runs[0][1], runs)
    status = status.to_k8s()
    assert status["phase"] == "Succeeded" and status["lastScheduleTime"] == "2025-01-01T02:00:00Z"
    assert [r["jobName"] for r in status["recentRuns"]] == [f"overnight-processing-{n}" for n in (3, 2, 1, 0)]
    assert status["recentRuns"][0]["requests"] == 500 and "p95Ms" in status["recentRuns"][0]
    assert status["recentRuns"][-1]["phase"] == "Failed" and status["recentRuns"][-1]["reason"] == "NoResults"
    declared(status, STATUS_SCHEMA)


def test_an_engine_aimed_at_a_lab_signs_with_its_dev_issuer_key():
    children = personaload.desired_children(PEAK, spec_of(PEAK), "img", "pim-dev-issuer")
    pod = by(children, "Job", personaload.job_name(PEAK, spec_of(PEAK), "img"))["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["PIM_DEV_ISSUER_KEY_FILE"] == "/etc/pim/dev-issuer/dev-issuer.pem"
    assert {"name": "dev-issuer", "secret": {"secretName": "pim-dev-issuer", "defaultMode": 0o440}} in pod["volumes"]
    assert pod["securityContext"]["fsGroup"] == 10001, "the key file must be readable by the engine's user"

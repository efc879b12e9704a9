"""The PersonaLoad's pure functions: config, Job/CronJob, run phases and the copied summary."""

from __future__ import annotations

import copy
import json

from cr_samples import by, sample, spec_of

from pimlab_operator.personaload import desired as personaload

PEAK = sample("PersonaLoad", "peak-clinic")
NIGHTLY = sample("PersonaLoad", "overnight-processing")
LAB = {"spec": {"image": "ghcr.io/pim-sre/lab:0.1.0"}}
SUMMARY = {"requests": 1000, "errors": 5, "errorRatio": 0.005, "achievedRate": 199.5,
           "latencyMs": {"p50": 20, "p95": 120, "p99": 250, "max": 900}, "thresholdsMet": True,
           "byPersona": {"patient": {"requests": 700, "errors": 3}}}


def engine_pod(message: str | None) -> dict:
    terminated = {"exitCode": 0, **({"message": message} if message else {})}
    return {"metadata": {"name": "peak-clinic-x-0"},
            "status": {"containerStatuses": [{"name": "engine", "state": {"terminated": terminated}}]}}


def job(*conditions: str, active: int = 0) -> dict:
    return {"metadata": {"name": "peak-clinic-abc"},
            "status": {"startTime": "2025-01-01T00:00:00Z", "active": active,
                       "completionTime": "2025-01-01T00:30:00Z" if "Complete" in conditions else None,
                       "conditions": [{"type": c, "status": "True", "reason": "X", "message": "m",
                                       "lastTransitionTime": "2025-01-01T00:30:00Z"} for c in conditions]}}


def test_config_map_and_job_with_hashed_name_parallelism_and_lab_image():
    image = personaload.engine_image(PEAK, LAB)
    children = personaload.desired_children(PEAK, spec_of(PEAK), image)
    config = json.loads(by(children, "ConfigMap", "peak-clinic-config")["data"]["config.json"])
    assert config["parallelism"] == 2 and config["profile"]["peakRate"] == 800
    name = personaload.job_name(PEAK, spec_of(PEAK), image)
    assert name.startswith("peak-clinic-") and len(name) == len("peak-clinic-") + 8
    spec = by(children, "Job", name)["spec"]
    assert spec["parallelism"] == 2 and spec["completions"] == 2 and spec["backoffLimit"] == 0
    container = spec["template"]["spec"]["containers"][0]
    assert container["image"] == "ghcr.io/pim-sre/lab:0.1.0"
    assert container["args"] == ["load", "run", "--config", "/etc/pim/load/config.json"]
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert {"name": "PIM_LOAD_TARGET_URL", "value": "http://pim-gateway.lab.svc"} in container["env"]
    assert all(c["metadata"]["ownerReferences"][0]["kind"] == "PersonaLoad" for c in children)


def test_editing_the_spec_names_a_new_job():
    """A Job's pod template is immutable: an edit is a new run under a new name (the old Job
    leaves the desired set and is pruned, see tests/cluster/test_pruning.py)."""
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


def test_without_an_image_only_the_config_is_rendered_and_status_says_why():
    assert [c["kind"] for c in personaload.desired_children(PEAK, spec_of(PEAK), None)] == ["ConfigMap"]
    status, conditions = personaload.personaload_status(PEAK, None, None, None, [])
    assert status["phase"] == "Pending" and conditions[0].reason == "ImageUnknown"


def test_phases_follow_the_job():
    assert personaload.personaload_status(PEAK, "i", job(active=2), None, [])[0]["phase"] == "Running"
    status, conditions = personaload.personaload_status(PEAK, "i", job("Complete"), None,
                                                        [engine_pod(json.dumps(SUMMARY))])
    assert status["phase"] == "Succeeded" and status["jobName"] == "peak-clinic-abc"
    assert status["startedAt"] == "2025-01-01T00:00:00Z" and status["completedAt"] == "2025-01-01T00:30:00Z"
    assert status["summary"]["latencyMs"]["p95"] == 120 and conditions[0].status
    failed, conditions = personaload.personaload_status(PEAK, "i", job("Failed"), None, [])
    assert failed["phase"] == "Failed" and conditions[0].reason == "RunFailed"


def test_malformed_termination_message_is_ignored_with_a_condition():
    status, conditions = personaload.personaload_status(PEAK, "i", job("Complete"), None,
                                                        [engine_pod("Traceback (most recent call last): boom")])
    assert "summary" not in status
    bad = next(c for c in conditions if c.type == "SummaryValid")
    assert not bad.status and bad.reason == "TerminationMessageMalformed"
    invalid = personaload.summary_from_pods([engine_pod(json.dumps({"requests": -1}))])
    assert invalid[0] is None and "not a summary" in invalid[1]


def test_summaries_of_parallel_engines_add_counts_and_keep_worst_latency():
    other = {**SUMMARY, "requests": 1000, "errors": 15, "latencyMs": {"p95": 200}, "thresholdsMet": False}
    merged = personaload.merge_summaries([SUMMARY, other])
    assert merged["requests"] == 2000 and merged["errors"] == 20 and merged["errorRatio"] == 0.01
    assert merged["latencyMs"]["p95"] == 200 and merged["thresholdsMet"] is False
    assert merged["byPersona"]["patient"]["requests"] == 1400
    status, conditions = personaload.personaload_status(
        PEAK, "i", job("Complete"), None, [engine_pod(json.dumps(SUMMARY)), engine_pod(json.dumps(other))])
    assert conditions[0].reason == "ThresholdsMissed" and not conditions[0].status

"""Drills on the real node: the sample lab (PostgreSQL Shards, the services in pods, the persona
engine as a Job) scraped by the lab's Prometheus, the sample SLOs scoped to the test's
namespace (their 30-day windows, and the short page tier of test_slo_alerts_real_node.py, so a
page clears within a minute of the errors ending), and `samples/60-drills.yaml`'s
`primary-loss-under-load` with a 20 s baseline instead of its 60 s.

- The sample drill passes: shard-00's primary pod is killed once, the Shard fails over, the
  clients' ledger reads every acknowledged write back, the audit chains verify, and the
  hypotheses say so with their sources. The operator is restarted while the drill is injecting:
  the drill resumes and nothing is injected twice (one ChaosExperiment, one pod deleted).
- A hypothesis that cannot hold (`maxRecoverySeconds: 0.1`) fails the drill and says which.
- Deleting a drill mid-injection leaves no load and no fault behind.

Without a real node (kwok nodes run nothing) the module skips, saying so."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml

from pimlab.waiting import wait_for
from test_slo_alerts_real_node import drill as scoped_slo

pytestmark = pytest.mark.timeout(900)
ROOT = Path(__file__).resolve().parents[2]
SAMPLE = "primary-loss-under-load"
SHARD = "shard-00"


def sample_drill(namespace: str, name: str = SAMPLE, **hypotheses) -> dict:
    doc = next(d for d in yaml.safe_load_all((ROOT / "samples" / "60-drills.yaml").read_text())
               if d and d["metadata"]["name"] == SAMPLE)
    doc = copy.deepcopy(doc)
    doc["metadata"] = {"name": name, "namespace": namespace}
    steps = doc["spec"]["steps"]
    steps[0] = {"baseline": {"duration": "20s"}}
    doc["spec"]["hypotheses"].update(hypotheses)
    return doc


@pytest.fixture(scope="module")
def lab(cluster, real_sample_lab):
    """The run's real-node sample lab (tests/cluster/conftest.py) with the SLOs the sample drill
    names, scoped to its namespace. Its operator is `lab`; `lab.namespace` the namespace."""
    namespace = real_sample_lab.namespace
    slos = {s["name"] for s in sample_drill(namespace)["spec"]["hypotheses"]["slos"]}
    cluster.apply([drill_slo(name, namespace) for name in sorted(slos)])
    return real_sample_lab


def drill_slo(name: str, namespace: str) -> dict:
    """The sample SLO `name` scoped to `namespace`, with its own window and a page tier short
    enough to clear within the drill's recovery."""
    slo = scoped_slo(name, namespace)
    sample = next(d for d in yaml.safe_load_all((ROOT / "samples" / "30-slos.yaml").read_text())
                  if d and d["metadata"]["name"] == name)
    slo["spec"]["window"] = sample["spec"]["window"]
    return slo


def ended(cluster, name: str, namespace: str, timeout: float = 600) -> dict:
    return wait_for(lambda: (o := cluster.get("drill", name, namespace))
                    and (o.get("status") or {}).get("phase") in ("Passed", "Failed", "Aborted") and o,
                    timeout=timeout, interval=3, what=f"Drill {name} to end")


def injected(cluster, name: str, namespace: str, timeout: float = 240) -> dict:
    """The drill once its injection is recorded (an injection at offset 0 moves it through
    Injecting to Recovering at once)."""
    drill = wait_for(lambda: (o := cluster.get("drill", name, namespace))
                     and ((o.get("status") or {}).get("injections") or (o.get("status") or {}).get("verdict")) and o,
                     timeout=timeout, interval=1, what=f"Drill {name} to inject")
    assert drill["status"].get("injections"), f"Drill {name} ended before injecting: {drill['status'].get('message')}"
    return drill


def listed(cluster, kind: str, namespace: str, selector: str = "") -> list[dict]:
    args = ["get", kind, "-n", namespace, "-o", "json"] + (["-l", selector] if selector else [])
    return json.loads(cluster.kubectl(*args).stdout)["items"]


def hypothesis(drill: dict, name: str) -> dict:
    return next(h for h in drill["status"]["hypotheses"] if h["name"] == name)


def test_the_sample_drill_passes_and_a_restart_mid_injection_injects_nothing_twice(cluster, lab):
    namespace = lab.namespace
    primary = (cluster.get("shard", SHARD, namespace)["status"] or {}).get("currentPrimary")
    # the sample's 15 s holds on a quiet node (`make drill`); beside the other tests' load the
    # clients may wait a few seconds more for the promotion
    cluster.apply(sample_drill(namespace, maxRecoverySeconds=25))
    wait_for(lambda: ((cluster.get("drill", SAMPLE, namespace) or {}).get("status") or {}).get("failovers"),
             timeout=300, interval=1, what="the drill to record shard-00's failover")
    lab.stop()  # mid-drill, the injection recorded and done: a restart must not fire it again
    lab.start()
    drill = ended(cluster, SAMPLE, namespace)
    status = drill["status"]
    assert status["phase"] == "Passed", json.dumps(status, indent=1)[:6000]
    assert status["verdict"] == "Passed" and 0 < status["score"] <= 100, status
    experiments = listed(cluster, "chaosexperiments", namespace, f"pim-sre.lab/drill={SAMPLE}")
    assert len(experiments) == 1, [e["metadata"]["name"] for e in experiments]
    (injection,) = status["injections"]
    assert injection["targets"] == [primary], (injection, primary)
    failovers = [f for f in status.get("failovers") or [] if f["shard"] == SHARD]
    assert failovers and failovers[0]["from"] == primary, status.get("failovers")
    ledger = status["ledger"]
    assert ledger["acknowledged"] > 0 and ledger["lost"] == 0 and ledger["verified"] == ledger["acknowledged"], ledger
    assert hypothesis(drill, "maxLostWrites")["met"]
    assert status["recovery"]["seconds"] is not None and status["recovery"]["seconds"] <= 25, status["recovery"]
    for budget in status["budgets"]:
        assert budget["totalEvents"] > 0 and budget["burned"] is not None, budget
    events = {e["reason"] for e in listed(cluster, "events", namespace)
              if e["involvedObject"].get("kind") == "Drill" and e["involvedObject"]["name"] == SAMPLE}
    assert {"Baseline", "Injecting", "Recovering", "Passed"} <= events, events
    print(f"drill {SAMPLE}: score {status['score']}, RTO {status['recovery']['seconds']} s, ledger {ledger}, "
          f"budgets {[(b['slo'], b['burned']) for b in status['budgets']]}")


def test_a_hypothesis_that_cannot_hold_fails_the_drill_and_says_which(cluster, lab):
    namespace = lab.namespace
    cluster.apply(sample_drill(namespace, "impossible-rto", maxRecoverySeconds=0.1))
    drill = ended(cluster, "impossible-rto", namespace)
    status = drill["status"]
    assert status["phase"] == "Failed" and status["verdict"] == "Failed", status
    rto = hypothesis(drill, "maxRecoverySeconds")
    assert rto["met"] is False and rto["limit"] == 0.1 and rto["observed"] > 0.1, rto
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert failed["status"] == "True" and "maxRecoverySeconds" in failed["message"], failed
    assert status["ledger"]["lost"] == 0, status["ledger"]


def test_deleting_a_drill_mid_injection_leaves_no_load_and_no_fault(cluster, lab):
    namespace = lab.namespace
    name = "deleted-mid-run"
    cluster.apply(sample_drill(namespace, name))
    injected(cluster, name, namespace)
    cluster.kubectl("delete", "drill", name, "-n", namespace, "--timeout=150s", timeout=160)
    selector = f"pim-sre.lab/drill={name}"
    assert listed(cluster, "personaloads", namespace, selector) == []
    assert listed(cluster, "chaosexperiments", namespace, selector) == []
    wait_for(lambda: not [p for p in listed(cluster, "pods", namespace, "pim-sre.lab/personaload")
                          if p["metadata"]["name"].startswith(name)],
             timeout=90, what="the drill's engine pods to go")
    cluster.kubectl("wait", "--for=condition=Ready", f"shard/{SHARD}", "-n", namespace, "--timeout=180s", timeout=190)

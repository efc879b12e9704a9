"""Every runbook command that is not marked as needing a real node or Flux (docs/runbooks/README.md)
runs, as written, against the sample lab on the local control plane: the samples in namespace
`lab` (kwok nodes: the Lab's pods Ready without containers, the Lab not Ready only for its
SQL Server Shards, which never bootstrap there; the ChaosExperiments dry runs), the objects the runbooks themselves tell the reader to apply (their ```yaml blocks), and
the operator as a local process. Each command must exit 0 in a shell, in the runbooks' order."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from operator_process import operator_process
from pimlab.cluster.lab import sample_documents
from pimlab.waiting import wait_for
from test_runbooks import RUNBOOKS, commands

ROOT = Path(__file__).resolve().parents[2]
LAB = "lab"  # the runbooks name it


def runbook_objects() -> list[dict]:
    """The lab objects the runbooks show as manifests to apply (e.g. 40's claim-drill)."""
    found = []
    for path in sorted(RUNBOOKS.glob("*.md")):
        for block in re.findall(r"```yaml\n(.*?)```", path.read_text(), re.S):
            found += [d for d in yaml.safe_load_all(block)
                      if d and d.get("apiVersion", "").startswith("pim-sre.lab/") and d["metadata"].get("namespace") == LAB]
    return found


def placeholders() -> dict[str, str]:
    """`<name>` after a kind: the first sample object of that kind."""
    first: dict[str, str] = {}
    for doc in sample_documents(real_node=False):
        first.setdefault(doc["kind"].lower(), doc["metadata"]["name"])
    return first


def filled(command: str, names: dict[str, str]) -> str:
    command = re.sub(r"(\w+) <name>", lambda m: f"{m.group(1)} {names[m.group(1)]}", command)
    command = command.replace("pim-sre.lab/shard=<name>", f"pim-sre.lab/shard={names['shard']}")
    command = command.replace("<ns>", LAB)
    assert "<" not in re.sub(r"<<'?EOF'?", "", command), f"a placeholder the test cannot fill: {command}"
    return command


@pytest.fixture(scope="module")
def lab(cluster, crds_installed, tmp_path_factory):
    """The sample lab and the runbooks' own objects in namespace `lab`, the Lab's services up
    (only its Shards keep it from Ready) and the dry runs planned. Deleted while the operator still runs (its finalizers), and waited for:
    test_gitops delivers the same namespace from Git."""
    if cluster.get("namespace", LAB) is not None:
        pytest.skip(f"namespace {LAB} exists already (make lab or make gitops in this tree): not touching it")
    cluster.kubectl("create", "namespace", "pim-system", check=False)  # the kill switch lives on it
    documents = [*sample_documents(real_node=False), *runbook_objects()]
    with operator_process(cluster, tmp_path_factory, "runbooks", namespace=LAB, documents=documents,
                          env={"PIMLAB_OPERATOR_NAMESPACE": "pim-system"}) as operator:
        try:
            def ready() -> bool:
                lab = cluster.get("lab", "pim", LAB) or {}
                planned = [(cluster.get("chaosexperiment", d["metadata"]["name"], LAB) or {}).get("status", {})
                           .get("plannedTargets") for d in documents if d["kind"] == "ChaosExperiment"]
                conditions = {c["type"]: c for c in lab.get("status", {}).get("conditions", [])}
                return (conditions.get("Ready") or {}).get("reason") == "ShardsNotReady" and all(planned)
            wait_for(ready, timeout=120, interval=1)
            yield operator
        finally:
            cluster.kubectl("delete", "namespace", LAB, "--timeout=90s", check=False, timeout=100)
            cluster.kubectl("annotate", "namespace", "pim-system", "pim-sre.lab/chaos-paused-", check=False)


def test_every_unmarked_runbook_command_runs_on_the_local_lab(cluster, lab):
    names = placeholders()
    env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig),
           "PATH": f"{cluster.bin_dir}:{Path(sys.executable).parent}:{os.environ['PATH']}"}
    ran, failed = [], []
    for path in sorted(RUNBOOKS.glob("*.md")):
        for command, needs in commands(path.read_text()):
            if needs:
                continue
            command = filled(command, names)
            if re.search(r"\s-w(\s|$)", command):  # a watch: what it prints first, then stopped
                proc = subprocess.Popen(["bash", "-c", command], cwd=ROOT, env=env, text=True,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
                try:
                    out, _ = proc.communicate(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.terminate()
                    out, _ = proc.communicate()
                else:
                    failed.append((path.name, command, f"the watch ended by itself: {out}"))
                name = command.split()[3]
                if name not in out:
                    failed.append((path.name, command, out))
            else:
                proc = subprocess.run(["bash", "-c", command], cwd=ROOT, env=env, capture_output=True,
                                      text=True, timeout=60)
                if proc.returncode != 0:
                    failed.append((path.name, command, proc.stdout + proc.stderr))
            ran.append((path.name, command))
    assert not failed, "\n\n".join(f"{name}: {command}\n{out}" for name, command, out in failed)
    assert len(ran) >= 25, ran
    assert {name for name, _ in ran} >= {"05_encounter-write.md", "30_sql-failover.md", "32_chaos-controller.md",
                                         "40_claim-chaos-drill.md", "chaos.md", "lab-not-ready.md"}

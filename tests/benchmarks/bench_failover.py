"""Shard failover time on the real node: `python tests/benchmarks/bench_failover.py [--runs 5]`.

The small failover lab of tests/cluster/failover_lab.py (one 3-replica PostgreSQL Shard,
`unhealthyAfterSeconds: 5`, the gateway/patient/encounter/admin services), two clients booking
encounters through the gateway. Each run loses the primary (alternately `kill -9` of its
postmaster from the host and `kubectl delete pod`) and measures, from the loss:
  - client: the first booking acknowledged (202) that was sent after the loss;
  - status: lastFailover.outageSeconds (primary lost -> the new primary's first quorum write)
    and durationSeconds (failover started -> that write).
Every run also checks that no acknowledged booking is missing on the new primary.

The floor in the same run is the detection threshold itself (`unhealthyAfterSeconds`, the time
the manager waits on purpose before failing over): "overhead" is what the failover adds to it.
Anchors: nocentino/sql-on-k8s-operator waits a 30 s health threshold before it even starts;
CloudNativePG documents failovers in seconds.

Needs a real node (`PIMLAB_NODE=real`); starts the cluster if none runs and stops it afterwards.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.benchmarks.real_node import failover_lab_up  # noqa: E402  (puts tests/cluster on the path)
from tests.benchmarks.sigterm import unwind_on_sigterm  # noqa: E402

from failover_lab import UNHEALTHY_AFTER, FailoverLab  # noqa: E402

NOCENTINO_THRESHOLD_S = 30.0


def summary(values: list[float]) -> dict:
    return {"median": round(statistics.median(values), 2), "max": round(max(values), 2),
            "min": round(min(values), 2)}


def measure(lab: FailoverLab, cluster, runs: int) -> list[dict]:
    """`runs` failovers, alternately kill -9 of the primary's postmaster and its pod deleted."""
    faults = {"kill -9": lab.kill9,
              "pod delete": lambda pod: cluster.kubectl("delete", "pod", pod, "-n", lab.namespace, "--wait=false")}
    rows = []
    for i in range(runs):
        name = list(faults)[i % 2]
        f = lab.fail_over(faults[name])
        lost = f.writers.acknowledged() - lab.stored(f.new)
        row = {"run": i + 1, "fault": name, "from": f.old, "to": f.new,
               "clientOutageSeconds": round(f.client_outage, 2), "outageSeconds": f.record["outageSeconds"],
               "durationSeconds": f.record["durationSeconds"], "acknowledged": len(f.writers.acknowledged()),
               "lost": len(lost)}
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def report(rows: list[dict]) -> dict:
    client = [r["clientOutageSeconds"] for r in rows]
    out = {
        "runs": len(rows), "unhealthyAfterSeconds": UNHEALTHY_AFTER,
        "clientOutageSeconds": summary(client),
        "outageSeconds": summary([r["outageSeconds"] for r in rows]),
        "durationSeconds": summary([r["durationSeconds"] for r in rows]),
        "overheadOverThresholdSeconds": summary([v - UNHEALTHY_AFTER for v in client]),
        "ratioToNocentinoThreshold": round(statistics.median(client) / NOCENTINO_THRESHOLD_S, 2),
        "lostAcknowledged": sum(r["lost"] for r in rows),
    }
    print(f"FAILOVER primary loss -> first acknowledged write (client): median {out['clientOutageSeconds']['median']} s, "
          f"max {out['clientOutageSeconds']['max']} s over {len(rows)} runs; threshold {UNHEALTHY_AFTER} s, overhead "
          f"median {out['overheadOverThresholdSeconds']['median']} s; {out['ratioToNocentinoThreshold']}x nocentino's "
          f"30 s threshold alone; acknowledged writes lost: {out['lostAcknowledged']}", flush=True)
    return out


def main(runs: int) -> dict:
    with failover_lab_up("bench-failover", "bench-ha") as (lab, cluster, _workdir):
        rows = measure(lab, cluster, runs)
    return report(rows)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    unwind_on_sigterm()
    report = main(args.runs)
    print(json.dumps(report, indent=2))
    sys.exit(1 if report["lostAcknowledged"] else 0)

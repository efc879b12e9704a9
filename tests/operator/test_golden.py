"""Golden files: every sample object's full set of rendered children, compared whole, so a diff
in review shows exactly what a change does to the cluster.

Update them on purpose with `make golden` (PIMLAB_UPDATE_GOLDEN=1), then read the diff.
The ChaosExperiment samples are dry runs: they render no children, only a plan in status.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from cr_samples import sample, spec_of
from pimlab_operator.lab import desired as lab
from pimlab_operator.personaload import desired as personaload
from pimlab_operator.shard import desired as shard
from pimlab_operator.slo import desired as slo

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
#: Stands in for the generated SA password, which is random by design.
PASSWORD = "golden-placeholder-not-a-password"


def children(body: dict) -> list[dict]:
    """What the operator applies for `body`, with the optional CRDs installed."""
    spec = spec_of(body)
    if body["kind"] == "Lab":
        shard_map = lab.shard_map(sample("Shard"), body["metadata"]["namespace"], None)
        return lab.desired_children(body, spec, shard_map, with_service_monitor=True)
    if body["kind"] == "Shard":
        return shard.desired_children(body, spec, PASSWORD)
    if body["kind"] == "SLO":
        return slo.desired_children(body, spec, with_prometheus_rule=True)
    image = personaload.engine_image(spec, sample("Lab", spec.target.lab_ref or "pim"))
    return personaload.desired_children(body, spec, image)


def rendered() -> dict[str, str]:
    files = {}
    for kind in ("Lab", "Shard", "SLO", "PersonaLoad"):
        for body in sample(kind):
            name = f"{kind.lower()}-{body['metadata']['name']}.yaml"
            header = f"# Children of {kind} {body['metadata']['name']} (samples/): regenerate with `make golden`.\n"
            files[name] = header + yaml.safe_dump_all(children(body), sort_keys=False, width=120)
    return files


FILES = rendered()


def test_golden_files_are_the_whole_set():
    if os.environ.get("PIMLAB_UPDATE_GOLDEN"):
        for stale in set(p.name for p in GOLDEN.glob("*.yaml")) - set(FILES):
            (GOLDEN / stale).unlink()
        for name, text in FILES.items():
            (GOLDEN / name).write_text(text)
    assert sorted(p.name for p in GOLDEN.glob("*.yaml")) == sorted(FILES), "run `make golden`"


@pytest.mark.parametrize("name", sorted(FILES))
def test_rendered_children_match_the_golden_file(name):
    path = GOLDEN / name
    if os.environ.get("PIMLAB_UPDATE_GOLDEN"):
        path.write_text(FILES[name])
    assert path.exists(), f"{path} is missing: run `make golden`"
    assert FILES[name] == path.read_text(), f"{name} differs from what the operator renders: " \
        "if the change is intended, run `make golden` and review the diff"

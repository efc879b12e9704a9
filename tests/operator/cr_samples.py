"""Sample CRs as the pure functions receive them (uid, namespace, generation stamped)."""

from __future__ import annotations

import copy
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def sample(kind: str, name: str | None = None) -> dict | list[dict]:
    found = []
    for path in sorted((ROOT / "samples").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc["kind"] == kind:
                doc = copy.deepcopy(doc)
                doc["metadata"].update(uid=f"uid-{doc['metadata']['name']}", generation=1)
                found.append(doc)
    if name is None:
        return found
    return next(d for d in found if d["metadata"]["name"] == name)


def by(children: list[dict], kind: str, name: str) -> dict:
    return next(c for c in children if c["kind"] == kind and c["metadata"]["name"] == name)


def spec_of(body: dict):
    """The typed spec the operator parses once per reconcile and passes down."""
    from pimlab_operator.kinds import BY_NAME

    return BY_NAME[body["kind"]].spec_model.model_validate(body["spec"])

"""The real apiserver refuses bad lab objects at the door, with a message naming the field."""

from __future__ import annotations

import importlib.util
import sys
import uuid
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def _load_cases():
    """tests/crd_cases.py, imported by path so it works whatever sys.path pytest set up."""
    if "pimlab_crd_cases" in sys.modules:
        return sys.modules["pimlab_crd_cases"]
    spec = importlib.util.spec_from_file_location("pimlab_crd_cases", ROOT / "tests" / "crd_cases.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["pimlab_crd_cases"] = module  # dataclasses look their module up while it loads
    spec.loader.exec_module(module)
    return module


cases = _load_cases()


@pytest.fixture(scope="module")
def ns(crds_installed):
    """One namespace for the whole module: the objects here are dry runs or deleted with it."""
    name = f"t-crd-{uuid.uuid4().hex[:8]}"
    crds_installed.kubectl("create", "namespace", name)
    yield name
    crds_installed.kubectl("delete", "namespace", name, "--wait=false", check=False)


def _create(cluster, obj: dict, namespace: str, *, dry_run: bool = True):
    args = ["create", "-n", namespace, "-f", "-"]
    if dry_run:
        args.insert(1, "--dry-run=server")
    return cluster.kubectl(*args, input=yaml.safe_dump(obj), check=False)


@pytest.mark.parametrize("kind", cases.VALID)
def test_valid_objects_are_accepted(crds_installed, ns, kind):
    proc = _create(crds_installed, cases.VALID[kind], ns)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("case", cases.INVALID, ids=lambda c: c.id)
def test_invalid_object_is_refused(crds_installed, ns, case):
    proc = _create(crds_installed, case.object(), ns)
    assert proc.returncode != 0, f"{case.id}: accepted, but should be refused ({case.field})"
    assert case.field in proc.stderr, f"{case.id}: message does not name {case.field}:\n{proc.stderr}"


def test_at_least_25_distinct_invalid_cases():
    assert len({case.id for case in cases.INVALID}) >= 25


def test_shard_ordinal_is_immutable(crds_installed, ns):
    shard = cases.patched(cases.VALID["Shard"], {"metadata": {"name": "shard-07"}, "spec": {"ordinal": 7, "primary": ""}})
    created = _create(crds_installed, shard, ns, dry_run=False)
    assert created.returncode == 0, created.stderr
    renumbered = cases.patched(shard, {"spec": {"ordinal": 8}})
    proc = crds_installed.kubectl("apply", "-n", ns, "-f", "-", input=yaml.safe_dump(renumbered), check=False)
    assert proc.returncode != 0, "changing spec.ordinal was accepted"
    assert cases.IMMUTABLE_ORDINAL_FIELD in proc.stderr and "immutable" in proc.stderr, proc.stderr
    switched = cases.patched(shard, {"spec": {"engine": "postgres"}})
    proc = crds_installed.kubectl("apply", "-n", ns, "-f", "-", input=yaml.safe_dump(switched), check=False)
    assert proc.returncode != 0 and "spec.engine" in proc.stderr and "immutable" in proc.stderr, proc.stderr
    # Other fields stay editable.
    resized = cases.patched(shard, {"spec": {"replicas": 5, "synchronousReplicas": 2}})
    proc = crds_installed.kubectl("apply", "-n", ns, "-f", "-", input=yaml.safe_dump(resized), check=False)
    assert proc.returncode == 0, proc.stderr


def test_defaults_are_applied_by_the_apiserver(crds_installed, ns):
    minimal = {"apiVersion": cases.API_VERSION, "kind": "Shard", "metadata": {"name": "shard-09"},
               "spec": {"ordinal": 9, "slots": {"start": 0, "end": 9}}}
    proc = _create(crds_installed, minimal, ns, dry_run=False)
    assert proc.returncode == 0, proc.stderr
    spec = yaml.safe_load(crds_installed.kubectl("get", "shard", "shard-09", "-n", ns, "-o", "yaml").stdout)["spec"]
    assert spec["replicas"] == 3 and spec["edition"] == "Developer" and spec["engine"] == "sqlserver"
    assert spec["failover"] == {"automatic": True, "unhealthyAfterSeconds": 30, "allowDataLoss": False}
    assert spec["storage"]["size"] == "20Gi"
    assert "synchronousReplicas" not in spec  # unset on purpose: a CEL rule treats it as optional


def test_samples_apply(crds_installed):
    """The quick start's objects, as a server-side dry run (the namespace itself for real)."""
    crds_installed.kubectl("apply", "-f", str(ROOT / "samples" / "00-namespace.yaml"))
    proc = crds_installed.kubectl("apply", "--server-side", "--dry-run=server", "-f", str(ROOT / "samples"), check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("(server dry run)") >= 17


def test_category_lists_every_kind(crds_installed, ns):
    proc = crds_installed.kubectl("get", "pimlab", "-n", ns, check=False)
    assert proc.returncode == 0, proc.stderr


def test_explain_shows_field_descriptions(crds_installed):
    proc = crds_installed.kubectl("explain", "shards.spec.synchronousReplicas", "--api-version=pim-sre.lab/v1alpha1")
    assert "at most replicas-1" in proc.stdout

"""A clone of the repository with nothing beside it passes the tests that need the third-party
CRDs: they come from crds/thirdparty/ and from their projects' Go modules, never from a
directory outside the checkout."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

#: every test that installs the third-party CRDs and only dry-runs objects against them
CRD_TESTS = (
    "tests/cluster/test_control_plane.py::test_every_thirdparty_crd_installs_and_is_established",
    "tests/cluster/test_deploy_manifests.py",
    "tests/cluster/test_cluster_b_manifests.py",
    "tests/cluster/test_reconcilers.py",
)


@pytest.mark.timeout(1200)
def test_a_lone_clone_passes_the_crd_dependent_tests(cluster, tmp_path):
    alone = tmp_path / "alone"
    clone = alone / "pim-sre-lab"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True)
    assert [p.name for p in alone.iterdir()] == ["pim-sre-lab"]
    # The session's control plane, not a second one (the machine runs one real node): the
    # clone's tests find it through `.lab/` as a checkout's own tests do.
    (clone / ".lab").symlink_to(cluster.plane.layout.lab, target_is_directory=True)
    env = dict(os.environ, PYTHONPATH=f"{clone}{os.pathsep}{clone / 'operator'}",
               PIMLAB_KEEP_CLUSTER="1")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           *CRD_TESTS], cwd=clone, env=env, capture_output=True, text=True,
                          timeout=1100)
    summary = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert " passed" in summary and "failed" not in summary and "error" not in summary, summary

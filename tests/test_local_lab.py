"""How `make lab` places the samples and the operator on the real node, and the kwok nodes'
taint beside it (no cluster needed)."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from pimlab.cluster.controlplane import ControlPlane
from pimlab.cluster.handle import placed
from pimlab.cluster.images import GO_BUILDS, PROJECT_IMAGE
from pimlab.cluster.layout import (
    KWOK_NAMESPACE_ANNOTATIONS, KWOK_NODE_TAINT, REAL_NODE_NAMESPACE_ANNOTATIONS, Layout,
)
from pimlab.cluster.lab import sample_documents
from pimlab.cluster.local_cluster import IMAGES_WITHOUT_GO, LocalCluster

ROOT = Path(__file__).resolve().parent.parent


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def test_on_the_real_node_the_lab_runs_the_local_image_in_a_placed_namespace():
    docs = sample_documents(real_node=True)
    (namespace,) = by_kind(docs, "Namespace")
    assert namespace["metadata"]["annotations"] == REAL_NODE_NAMESPACE_ANNOTATIONS
    (lab,) = by_kind(docs, "Lab")
    assert lab["spec"]["image"] == PROJECT_IMAGE and lab["spec"]["imagePullPolicy"] == "Never"
    assert "auth" not in lab["spec"], "the samples' identity provider does not exist here: the dev issuer serves"
    assert "otlpEndpoint" not in lab["spec"]["observability"], "no collector runs here"
    cpu = sum(int(s["resources"]["requests"]["cpu"].rstrip("m")) * s.get("replicas", 1)
              for s in lab["spec"]["services"].values())
    shards = by_kind(docs, "Shard")
    assert {s["spec"]["engine"] for s in shards} == {"postgres"}, "SQL Server has no image here"
    assert all(s["spec"]["image"] == PROJECT_IMAGE for s in shards)
    cpu += sum(int(s["spec"]["resources"]["requests"]["cpu"].rstrip("m")) * s["spec"]["replicas"] for s in shards)
    assert cpu <= 1000, f"the lab asks {cpu}m CPU of a 2-core node that also runs the cluster"
    unchanged = sample_documents(real_node=False)
    assert [s["metadata"]["name"] for s in shards] == [s["metadata"]["name"] for s in by_kind(unchanged, "Shard")]
    assert [s["spec"]["slots"] for s in shards] == [s["spec"]["slots"] for s in by_kind(unchanged, "Shard")]
    assert [p["metadata"]["name"] for p in by_kind(docs, "PersonaLoad")] == ["overnight-processing"], \
        "one-off loads are the user's to start; the scheduled one waits for its time"


def test_with_kwok_only_the_samples_are_applied_as_written_and_no_drill_starts():
    written = [d for p in sorted((ROOT / "samples").glob("*.yaml"))
               for d in yaml.safe_load_all(p.read_text()) if d]
    assert by_kind(written, "Drill"), "samples/ declares a drill"
    assert sample_documents(real_node=False) == [d for d in written if d["kind"] != "Drill"]
    assert not by_kind(sample_documents(real_node=True), "Drill")


def test_the_local_operator_overlay_places_pim_system_like_the_layout_says():
    overlay = yaml.safe_load((ROOT / "clusters/local/operator/kustomization.yaml").read_text())
    (patch,) = overlay["patches"]
    (op,) = yaml.safe_load(patch["patch"])
    assert patch["target"] == {"kind": "Namespace", "name": "pim-system"}
    assert op["value"] == REAL_NODE_NAMESPACE_ANNOTATIONS
    (image,) = overlay["images"]
    assert f"{image['newName']}:{image['newTag']}" == PROJECT_IMAGE


def test_a_running_lab_takes_a_changed_project_image_and_only_then(tmp_path, monkeypatch):
    """`make lab` on a lab that already runs skips the cluster's image step: the project image
    is checked on its own, at the node's containerd, and a fresh import is reported so that
    the operator's pod is restarted onto it."""
    import io

    from pimlab.cluster import images
    from pimlab.cluster.lab import LocalLab

    lab = LocalLab(tmp_path, out=io.StringIO())
    asked = []
    answer = {PROJECT_IMAGE: "imported"}
    monkeypatch.setattr(images, "ensure", lambda refs, address, log: asked.append((refs, address)) or answer)
    assert lab.refresh_project_image() is True
    answer[PROJECT_IMAGE] = "present"
    assert lab.refresh_project_image() is False
    assert asked == [([PROJECT_IMAGE], str(lab.plane.layout.containerd_socket))] * 2


def test_kwok_nodes_carry_kwoks_taint_only_beside_a_real_node(tmp_path):
    """kwok's own taint for fake nodes; the kwok namespaces' default toleration tolerates it;
    with kwok nodes only there is none, so the samples land there as written."""
    assert KWOK_NODE_TAINT == {"key": "kwok.x-k8s.io/node", "value": "fake", "effect": "NoSchedule"}
    plane = ControlPlane(Layout(tmp_path))
    assert all(n["spec"]["taints"] == [KWOK_NODE_TAINT] for n in plane.kwok_nodes(tainted=True))
    assert all(n["spec"]["taints"] == [] for n in plane.kwok_nodes(tainted=False))
    (toleration,) = json.loads(KWOK_NAMESPACE_ANNOTATIONS["scheduler.alpha.kubernetes.io/defaultTolerations"])
    assert (toleration["key"], toleration["operator"], toleration["effect"]) == \
        (KWOK_NODE_TAINT["key"], "Exists", KWOK_NODE_TAINT["effect"])
    (real_ns,) = by_kind(sample_documents(real_node=True), "Namespace")
    (as_written,) = by_kind(sample_documents(real_node=False), "Namespace")
    assert placed(real_ns) and not placed(as_written)


def test_kwok_is_part_of_a_kwok_only_cluster_and_optional_beside_a_real_node(tmp_path):
    """`make lab` on the real node neither builds nor starts kwok: a healthy real-node cluster
    is one without it (the tests and benchmarks start it with ensure_kwok())."""
    plane = LocalCluster(tmp_path)
    plane.layout.node_mode_file.parent.mkdir(parents=True)
    plane.layout.node_mode_file.write_text("real\n")
    assert "kwok" not in plane.expected() and "kubelet" in plane.expected()
    plane.layout.node_mode_file.write_text("kwok: PIMLAB_NODE=kwok\n")
    assert "kwok" in plane.expected() and "kubelet" not in plane.expected()
    assert "kwok" in plane.binaries(), "`down` stops a kwok started beside the real node too"


def test_the_images_built_beside_the_go_builds_need_none():
    assert IMAGES_WITHOUT_GO and not set(IMAGES_WITHOUT_GO) & set(GO_BUILDS)

"""prometheus-operator, built from the Go module proxy, runs as a local process against the test
apiserver with the project's copy of the monitoring CRDs, and turns an SLO's PrometheusRule into
the rule-file ConfigMap of a `Prometheus` object -- the file the Prometheus pods will load.
No pod needs to run for that: the ConfigMap is the operator's own output."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from pimlab.cluster import monitoring, prometheus_operator_build
from pimlab.cluster.images import prometheus_operator
from pimlab.waiting import wait_for
from pimlab_operator.slo import desired as slo
from pimlab_operator.slo.model import SLOSpec

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def prometheus_operator_binaries(tmp_path_factory) -> dict[str, Path]:
    if shutil.which("go") is None:
        pytest.skip("Go is not installed: prometheus-operator is built with the machine's Go")
    log = tmp_path_factory.mktemp("po-build") / "build.log"
    with open(log, "w") as out:
        return prometheus_operator_build.build(out)


@pytest.fixture(scope="session")
def monitoring_crds(cluster) -> list[str]:
    files = monitoring.crd_files()
    names = [yaml.safe_load(f.read_text())["metadata"]["name"] for f in files]
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "--field-manager=pimlab-tests",
                    *[f"-f={f}" for f in files])
    # `kubectl wait` fails outright on a CRD created a moment ago (no status.conditions yet): poll.
    for name in names:
        deadline = time.monotonic() + 60
        established = 'jsonpath={.status.conditions[?(@.type=="Established")].status}'
        # check=False: before the apiserver writes any condition, the jsonpath itself errors.
        while cluster.kubectl("get", f"crd/{name}", "-o", established, check=False).stdout != "True":
            assert time.monotonic() < deadline, f"crd/{name} not Established in 60 s"
            time.sleep(0.5)
    return names


def test_binaries_report_their_version(prometheus_operator_binaries):
    for name, path in prometheus_operator_binaries.items():
        proc = subprocess.run([str(path), "--version"], capture_output=True, text=True, timeout=30)
        assert proc.returncode == 0, proc.stderr
        assert "0.85.0" in proc.stdout + proc.stderr, name


def test_prometheus_operator_renders_an_slo_rule_into_the_rule_configmap(
        cluster, monitoring_crds, prometheus_operator_binaries, namespace, tmp_path):
    pki = cluster.plane.layout.pki
    log_path = tmp_path / "prometheus-operator.log"
    port = _free_port()
    stack = monitoring.manifests(namespace)
    # The in-cluster Deployment's own arguments, but listening on loopback and scoped to one namespace.
    deployment = next(o for o in stack if o["kind"] == "Deployment")
    args = [a for a in deployment["spec"]["template"]["spec"]["containers"][0]["args"]
            if not a.startswith("--web.listen-address=")]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [str(prometheus_operator_binaries["prometheus-operator"]), *args,
             f"--apiserver={cluster.plane.layout.server}", f"--ca-file={pki / 'ca.crt'}",
             f"--cert-file={pki / 'admin.crt'}", f"--key-file={pki / 'admin.key'}",
             f"--namespaces={namespace}", f"--web.listen-address=127.0.0.1:{port}", "--log-level=debug"],
            stdout=log, stderr=subprocess.STDOUT)
    try:
        body = next(d for d in yaml.safe_load_all((ROOT / "samples" / "30-slos.yaml").read_text())
                    if d and d["metadata"]["name"] == "encounter-booking-availability")
        body["metadata"].update(namespace=namespace, uid="00000000-0000-0000-0000-000000000001")
        spec = SLOSpec.model_validate(body["spec"])
        rule = next(c for c in slo.desired_children(body, spec, True) if c["kind"] == "PrometheusRule")
        rule["metadata"].pop("ownerReferences", None)
        cluster.apply(rule)
        cluster.apply([o for o in stack if o["kind"] == "Prometheus"])
        uid = cluster.get("prometheusrule", rule["metadata"]["name"], namespace)["metadata"]["uid"]
        deadline, found = time.monotonic() + 120, None
        while time.monotonic() < deadline and found is None:
            assert proc.poll() is None, f"prometheus-operator exited:\n{log_path.read_text()[-3000:]}"
            cm = cluster.get("configmap", "prometheus-lab-rulefiles-0", namespace)
            if cm and cm.get("data"):
                found = cm
            else:
                time.sleep(1)
        assert found is not None, f"no rule ConfigMap in 120 s:\n{log_path.read_text()[-3000:]}"
        key = f"{namespace}-{rule['metadata']['name']}-{uid}.yaml"
        assert key in found["data"], sorted(found["data"])
        rendered = yaml.safe_load(found["data"][key])
        names = [r.get("record") or r.get("alert") for g in rendered["groups"] for r in g["rules"]]
        assert "slo:error_budget:remaining_ratio" in names and "SLOErrorBudgetBurnPage" in names
        # prometheus-operator also makes the StatefulSet the Prometheus pods will run in (after
        # the rule ConfigMap: a moment later)
        sts = wait_for(lambda: cluster.get("statefulset", "prometheus-lab", namespace), timeout=60, interval=0.5,
                       what="prometheus-operator's StatefulSet prometheus-lab")
        containers = {c["name"]: c for c in sts["spec"]["template"]["spec"]["containers"]}
        assert containers["prometheus"]["image"] == monitoring.PROMETHEUS_IMAGE  # upstream's, built here
        assert "--web.enable-lifecycle" in containers["prometheus"]["args"]
        assert containers["config-reloader"]["image"] == monitoring.OPERATOR_IMAGE
        assert containers["config-reloader"]["command"] == ["/bin/prometheus-config-reloader"]
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_the_monitoring_stack_passes_server_side_dry_run(cluster, monitoring_crds, namespace):
    stack = monitoring.manifests(namespace)
    proc = cluster.kubectl("apply", "--server-side", "--dry-run=server", "--force-conflicts", "--field-manager=pimlab-tests", "-f", "-",
                           input=yaml.safe_dump_all(stack))
    assert proc.stdout.count("serverside-applied") == len(stack), proc.stdout
    prom = next(o for o in stack if o["kind"] == "Prometheus")
    assert prom["spec"]["ruleSelector"]["matchLabels"] == {"app.kubernetes.io/part-of": "pim-sre-lab"}
    assert monitoring.prometheus_url(namespace) == f"http://prometheus.{namespace}:9090"


def test_the_operator_image_holds_both_binaries_where_prometheus_operator_looks(prometheus_operator_binaries,
                                                                                tmp_path):
    import tarfile

    tar_path = prometheus_operator.image_rootfs(tmp_path / "rootfs.tar", prometheus_operator_binaries)
    with tarfile.open(tar_path) as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert members["bin/operator"].mode == 0o755 and members["bin/prometheus-config-reloader"].size > 1_000_000
        tar.extractall(tmp_path / "root", filter="tar")
    proc = subprocess.run([str(tmp_path / "root" / "bin" / "prometheus-config-reloader"), "--version"],
                          capture_output=True, text=True, timeout=30)
    assert "0.85.0" in proc.stdout + proc.stderr

"""The node's images, built here without a registry (pimlab.cluster.images), run for real:
with podman on the images' private storage, and through a private containerd (its own root,
state and socket under a temporary directory: never the node's containerd)."""

from __future__ import annotations

import json
import shutil
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path

import pytest

from pimlab.cluster import images
from pimlab.cluster.images import builder, project

pytestmark = pytest.mark.timeout(1800)  # a cold project image build downloads from PyPI

ROOT = Path(__file__).resolve().parents[2]


def podman_run(ref: str, *args: str, entrypoint: str | None = None) -> subprocess.CompletedProcess:
    cmd = [*images.podman_cmd(), "run", "--rm", "--network=none", *images.ulimit_args()]
    if entrypoint:
        cmd.append(f"--entrypoint={entrypoint}")
    return subprocess.run([*cmd, ref, *args], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="session")
def built() -> dict[str, images.Built]:
    """Each image built once per session (a no-op when the cache is current)."""
    return {ref: images.build(ref) for ref in images.ALL_IMAGES}


def test_pause_image_runs_and_stops_on_sigterm(built):
    version = podman_run(images.PAUSE_IMAGE, "-v")
    assert version.returncode == 0, version.stderr
    assert f"v{images.PAUSE_VERSION}" in version.stdout
    name = f"pimlab-pause-test-{int(time.time())}"
    start = subprocess.run([*images.podman_cmd(), "run", "-d", "--name", name, "--network=none",
                            *images.ulimit_args(), images.PAUSE_IMAGE],
                           capture_output=True, text=True, timeout=60)
    assert start.returncode == 0, start.stderr
    try:
        state = subprocess.run([*images.podman_cmd(), "inspect", "-f", "{{.State.Running}}", name],
                               capture_output=True, text=True).stdout.strip()
        assert state == "true"
        subprocess.run([*images.podman_cmd(), "stop", "-t", "5", name], capture_output=True, check=True)
        code = subprocess.run([*images.podman_cmd(), "inspect", "-f", "{{.State.ExitCode}}", name],
                              capture_output=True, text=True).stdout.strip()
        assert code == "0"  # pause exits cleanly on SIGTERM, not killed after the timeout
    finally:
        subprocess.run([*images.podman_cmd(), "rm", "-f", name], capture_output=True)


def test_project_image_holds_the_cli_python_311_postgres_and_prometheus(built):
    help_ = podman_run(images.PROJECT_IMAGE, "--help")
    assert help_.returncode == 0, help_.stderr
    assert "serve" in help_.stdout and "cluster" in help_.stdout
    probe = podman_run(images.PROJECT_IMAGE, "-c", (
        "python3 --version && command -v pimlab && id -u && "
        "ls /usr/lib/postgresql/*/bin/postgres /usr/lib/postgresql/*/bin/initdb && "
        "prometheus --version 2>&1 | head -1 && promtool --version 2>&1 | head -1 && "
        "ls /usr/lib/*/libodbc.so.2 && python3 -c 'import pyodbc, pimlab_operator, api_services'"),
        entrypoint="/bin/sh")
    assert probe.returncode == 0, probe.stdout + probe.stderr
    out = probe.stdout
    assert "Python 3.11." in out
    assert "/opt/venv/bin/pimlab" in out
    assert "\n10001\n" in out  # the Dockerfile's unprivileged user
    assert "/bin/postgres" in out and "/bin/initdb" in out
    assert "prometheus, version" in out and "promtool, version" in out
    assert "libodbc.so.2" in out  # unixODBC, which pyodbc loads


def test_addon_images_hold_their_static_binary_alone(built):
    coredns = podman_run(images.COREDNS_IMAGE, "-version")
    assert coredns.returncode == 0 and f"CoreDNS-{images.COREDNS_VERSION[1:]}" in coredns.stdout, coredns
    local_path = podman_run(images.LOCAL_PATH_IMAGE, "--help")
    assert local_path.returncode == 0 and "Local Path Provisioner" in local_path.stdout, local_path
    for ref in (images.COREDNS_IMAGE, images.LOCAL_PATH_IMAGE):
        with tarfile.open(built[ref].archive) as archive:  # docker-archive: one layer, one file
            layers = json.load(archive.extractfile("manifest.json"))[0]["Layers"]
            assert len(layers) == 1, layers
            with tarfile.open(fileobj=archive.extractfile(layers[0])) as layer:
                files = [m.name for m in layer.getmembers() if m.isfile()]
        assert len(files) == 1, files


def test_monitoring_images_run_their_upstream_binaries(built):
    """prometheus-operator's image runs the operator (entrypoint) and holds the config reloader it
    names for the Prometheus pods; Prometheus's image runs upstream's Prometheus, which (unlike
    Debian's) knows Kubernetes service discovery."""
    operator = podman_run(images.PROMETHEUS_OPERATOR_IMAGE, "--version")
    assert operator.returncode == 0 and "0.85.0" in operator.stdout + operator.stderr, operator
    reloader = podman_run(images.PROMETHEUS_OPERATOR_IMAGE, "--version",
                          entrypoint="/bin/prometheus-config-reloader")
    assert "0.85.0" in reloader.stdout + reloader.stderr, reloader
    prometheus = podman_run(images.PROMETHEUS_IMAGE, "--version")
    assert prometheus.returncode == 0 and "version 3.5.0" in prometheus.stdout + prometheus.stderr, prometheus
    archive = str(built[images.PROMETHEUS_IMAGE].archive)
    strings = subprocess.run(["grep", "-c", "prometheus/discovery/kubernetes", archive], capture_output=True, text=True)
    assert int(strings.stdout.strip() or 0) > 0, "Prometheus's image lacks Kubernetes service discovery"


def test_unchanged_inputs_are_not_rebuilt(built):
    for ref, first in built.items():
        started = time.monotonic()
        again = images.build(ref)
        assert not again.rebuilt and again.inputs == first.inputs and again.archive.is_file()
        assert time.monotonic() - started < 10, f"{ref}: an up-to-date check took too long"


def test_a_changed_input_rebuilds_the_project_image(built, tmp_path):
    # A copy of the build context, so the work tree is never touched; a test-only image name.
    context = tmp_path / "context"
    context.mkdir()
    for name in ("Dockerfile", ".dockerignore", *project.copy_sources(ROOT / "Dockerfile")):
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, context / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(src, context / name)
    ref = "localhost/pimlab/lab-test:changed-input"
    try:
        first = project.build(context=context, ref=ref)
        assert first.inputs == built[images.PROJECT_IMAGE].inputs  # same inputs, same hash
        same = project.build(context=context, ref=ref)
        assert not same.rebuilt
        marker = context / "templates" / "pimlab-test-marker.txt"
        marker.write_text("changed\n")
        changed = project.build(context=context, ref=ref)
        assert changed.rebuilt and changed.inputs != first.inputs
        shown = podman_run(ref, "-c", f"cat /app/templates/{marker.name}", entrypoint="/bin/sh")
        assert shown.stdout == "changed\n", shown.stderr
        ignored = context / "pimlab" / "__pycache__" / "x.pyc"  # .dockerignore'd: not an input
        ignored.parent.mkdir(exist_ok=True)
        ignored.write_bytes(b"\0")
        assert not project.build(context=context, ref=ref).rebuilt
    finally:
        # untagged, the next project build prunes it (rmi -f would also take shared layers)
        subprocess.run([*images.podman_cmd(), "untag", ref], capture_output=True)
        for path in (builder.state_path(ref), builder.archive_path(ref)):
            path.unlink(missing_ok=True)


class PrivateContainerd:
    """containerd with everything under one temporary directory, CRI plugin off."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="pimlab-ctrd-"))
        self.address = str(self.dir / "c.sock")
        config = self.dir / "config.toml"
        config.write_text(
            "version = 2\n"
            f'root = "{self.dir}/root"\nstate = "{self.dir}/state"\n'
            'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
            f'[grpc]\n  address = "{self.address}"\n'
            f'[ttrpc]\n  address = "{self.address}.ttrpc"\n'
            f'[plugins."io.containerd.internal.v1.opt"]\n  path = "{self.dir}/opt"\n')
        self.log = open(self.dir / "containerd.log", "w")
        self.proc = subprocess.Popen(["containerd", "--config", str(config)],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while subprocess.run(["ctr", "-a", self.address, "version"], capture_output=True).returncode:
            assert self.proc.poll() is None, (self.dir / "containerd.log").read_text()
            assert time.monotonic() < deadline, "containerd did not answer in 30 s"
            time.sleep(0.2)

    def ctr(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(["ctr", "-a", self.address, "-n", "k8s.io", *args],
                              capture_output=True, text=True, timeout=timeout)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()
        mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()
                  if line.split()[1].startswith(str(self.dir))]
        for mount in sorted(mounts, reverse=True):
            subprocess.run(["umount", "-l", mount], capture_output=True)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def containerd():
    if not shutil.which("containerd"):
        pytest.fail("containerd is not installed: `make deps` installs it")
    daemon = PrivateContainerd()
    yield daemon
    daemon.stop()


def test_ensure_imports_once_and_the_images_run_in_containerd(built, containerd):
    # The small images: the project's (629 MiB, 15-45 s to import) is imported and run in pods
    # by the real node's own tests.
    refs = [images.PAUSE_IMAGE, images.COREDNS_IMAGE]
    assert images.ensure(refs, containerd.address) == {ref: "imported" for ref in refs}
    started = time.monotonic()
    assert images.ensure(refs, containerd.address) == {ref: "present" for ref in refs}
    assert time.monotonic() - started < 10
    listed = containerd.ctr("images", "ls", "-q").stdout.split()
    assert set(refs) <= set(listed)

    run = containerd.ctr("run", "--rm", images.COREDNS_IMAGE, "coredns-version", "/coredns", "-version")
    assert run.returncode == 0 and "CoreDNS-" in run.stdout, run.stdout + run.stderr
    run = containerd.ctr("run", "--rm", images.PAUSE_IMAGE, "pause-version", "/pause", "-v")
    assert run.returncode == 0 and images.PAUSE_VERSION in run.stdout + run.stderr, run.stderr

    # An image re-imported from other inputs (here: the label says so) is imported again.
    containerd.ctr("images", "label", images.PAUSE_IMAGE, f"{images.INPUTS_LABEL}=stale")
    assert images.ensure([images.PAUSE_IMAGE], containerd.address) == {images.PAUSE_IMAGE: "imported"}

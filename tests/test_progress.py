"""The progress display of `make lab`'s and `make test`'s steps (pimlab.cluster.progress), with
real subprocesses: a failing step shows only its log's last lines and the log's path, a step
that succeeds is one line with its time, and a cold step's measured time is what the next run
expects. No cluster; the cache root is a temporary directory (PIMLAB_CACHE)."""

from __future__ import annotations

import io
import json
import os
import re
import select
import time

import pytest

from pimlab.cluster import build
from pimlab.cluster.progress import (
    CommandFailed, Progress, duration, for_tree, is_live, run, run_lanes, timings_path,
)

FAKE_GO = "#!/bin/sh\nfor i in $(seq 100); do echo line $i; done\nexit 3\n"


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    """A cache root of the test's own (the machine's ~/.cache/pimlab is never touched), and no CI
    variable from the environment running the tests."""
    monkeypatch.setenv("PIMLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("CI", raising=False)
    return tmp_path / "cache"


@pytest.fixture
def fake_go(tmp_path, monkeypatch):
    """A `go` first on PATH that prints 100 lines and exits 3."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "go").write_text(FAKE_GO)
    (bin_dir / "go").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")


def test_a_failing_go_build_shows_its_last_lines_and_its_log(tmp_path, fake_go):
    out = io.StringIO()
    progress = Progress(out, tmp_path / ".lab" / "logs")
    with pytest.raises(CommandFailed, match=r"go build in .* failed \(exit 3\)"):
        with progress.step("controlplane", "control plane binaries", cold=25 * 60) as step:
            build.go(["build", "./cmd/x"], tmp_path, step.log)

    log = tmp_path / ".lab" / "logs" / "controlplane.log"
    logged = log.read_text().splitlines()
    assert logged[0] == "$ go build ./cmd/x"
    assert logged[1:] == [f"line {i}" for i in range(1, 101)]

    shown = out.getvalue().splitlines()
    assert shown[0].startswith("FAIL control plane binaries: failed after ")
    tail = [line.removeprefix("     | ") for line in shown if line.startswith("     | ")]
    assert tail == [f"line {i}" for i in range(71, 101)]
    assert f"full log: {log}" in shown[-1]
    assert "line 70" not in out.getvalue()
    assert not timings_path().exists(), "a failed step is no measured cold run"


def test_run_with_sh_fails_naming_its_exit_code(tmp_path):
    out = io.StringIO()
    progress = Progress(out, tmp_path / "logs")
    with pytest.raises(CommandFailed, match=r"exit 3"):
        with progress.step("many-lines", "a command that fails") as step:
            run(["sh", "-c", "for i in $(seq 100); do echo line $i; done; exit 3"], step.log)
    assert (tmp_path / "logs" / "many-lines.log").read_text().count("\n") == 101
    assert out.getvalue().count("\n     | ") == 30


def test_a_step_that_succeeds_is_one_line_with_its_time(tmp_path):
    out = io.StringIO()
    progress = Progress(out, tmp_path / "logs")
    with progress.step("quick", "a quick step") as step:
        run(["sh", "-c", "echo hidden output"], step.log)
    lines = out.getvalue().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("ok   a quick step: ") and lines[0].endswith(" s")
    assert "hidden output" in (tmp_path / "logs" / "quick.log").read_text()


def test_cold_times_are_recorded_and_expected_next_time(tmp_path):
    out = io.StringIO()
    progress = Progress(out, tmp_path / "logs", start_delay=0)

    with progress.step("prometheus", "Prometheus binary", cold=600) as step:
        assert step.expectation() == "cold run ~10 min 00 s, estimated"
        time.sleep(0.3)
    measured = json.loads(timings_path().read_text())["prometheus"]["seconds"]
    assert 0.3 <= measured < 5

    with progress.step("prometheus", "Prometheus binary", cold=600) as step:
        assert step.expected == (measured, True)
        step.cached = True  # found built: not a cold run, nothing recorded
        time.sleep(0.05)
    assert json.loads(timings_path().read_text())["prometheus"]["seconds"] == measured
    started = rf"\.\.   Prometheus binary: \d+\.\d s \(last cold run {re.escape(duration(measured))}\)"
    assert re.search(started, out.getvalue())
    assert out.getvalue().splitlines()[-1].startswith("ok   Prometheus binary: up to date, ")


def test_without_a_terminal_a_long_step_says_its_start_and_a_heartbeat(tmp_path):
    out = io.StringIO()
    progress = Progress(out, tmp_path / "logs", heartbeat=0.2, start_delay=0.1)
    with progress.step("flux", "Flux controllers", cold=1200):
        time.sleep(0.8)
    lines = out.getvalue().splitlines()
    assert re.fullmatch(r"\.\.   Flux controllers: \d\.\d s \(cold run ~20 min 00 s, estimated\)", lines[0])
    assert lines[1].startswith("..   Flux controllers: ")
    assert lines[-1].startswith("ok   Flux controllers: ")
    assert "\r" not in out.getvalue()


def test_on_a_terminal_the_step_line_is_redrawn(tmp_path, monkeypatch):
    primary, secondary = os.openpty()
    with open(secondary, "w") as terminal:
        assert is_live(terminal)
        progress = Progress(terminal, tmp_path / "logs")
        with progress.step("image-lab", "image lab", cold=240):
            time.sleep(2.5)
        shown = _read_all(primary)
        monkeypatch.setenv("CI", "true")
        assert not is_live(terminal), "CI=true prints plain lines, also on a terminal"
    os.close(primary)
    assert shown.count("\r\x1b[K..   image lab: ") >= 2
    assert "ok   image lab: " in shown


def _read_all(fd: int) -> str:
    """What a pseudo-terminal holds, read until nothing more arrives for 0.3 s."""
    chunks = []
    while select.select([fd], [], [], 0.3)[0]:
        chunks.append(os.read(fd, 65536))
    return b"".join(chunks).decode()


def test_the_command_lines_log_under_the_trees_lab_logs(tmp_path):
    progress = for_tree(None, tmp_path)
    with progress.step("addons", "add-on binaries", cold=300) as step:
        print("go output", file=step.log)
    assert (tmp_path / ".lab" / "logs" / "addons.log").read_text() == "go output\n"


def test_a_build_found_cached_is_up_to_date_and_leaves_no_log(tmp_path):
    out = io.StringIO()
    progress = Progress(out, tmp_path / "logs")
    logs = []
    assert progress.build_step("flux", "Flux controllers", 1200, lambda: True, logs.append) is None
    assert out.getvalue().startswith("ok   Flux controllers: up to date, ")
    assert not (tmp_path / "logs").exists() and not timings_path().exists()
    progress.build_step("flux", "Flux controllers", 1200, lambda: False, lambda log: print("built", file=log))
    assert (tmp_path / "logs" / "flux.log").read_text() == "built\n"
    assert "flux" in json.loads(timings_path().read_text())


def test_two_lanes_run_side_by_side_each_step_its_own_lines(tmp_path):
    """The Go lane and the image lane at once: both steps say their start, neither hides the
    other's, and both cold times are recorded."""
    out = io.StringIO()
    progress = Progress(out, tmp_path / "logs", heartbeat=10, start_delay=0.1)

    def slow(key: str):
        def step(progress: Progress) -> None:
            with progress.step(key, f"building {key}", cold=60):
                time.sleep(0.6)
        return step

    started = time.monotonic()
    run_lanes(progress, [slow("controlplane")], [slow("image-lab")])
    assert time.monotonic() - started < 1.1, "the lanes ran one after the other"
    lines = out.getvalue().splitlines()
    for key in ("controlplane", "image-lab"):
        assert any(line.startswith(f"..   building {key}: ") for line in lines), lines
        assert any(line.startswith(f"ok   building {key}: ") for line in lines), lines
    assert set(json.loads(timings_path().read_text())) == {"controlplane", "image-lab"}


def test_a_failing_lane_lets_the_other_finish_then_raises(tmp_path):
    out = io.StringIO()
    progress = Progress(out, tmp_path / "logs")
    done = []

    def failing(progress: Progress) -> None:
        with progress.step("controlplane", "control plane"):
            raise CommandFailed("go build failed (exit 1)")

    def images(progress: Progress) -> None:
        with progress.step("image-lab", "image lab"):
            time.sleep(0.3)
        done.append("image-lab")

    with pytest.raises(CommandFailed, match="go build failed"):
        run_lanes(progress, [failing, lambda p: done.append("after the failure")], [images])
    assert done == ["image-lab"], "the failing lane stops; the other runs to its end"
    assert "FAIL control plane: failed after " in out.getvalue()


def test_go_build_names_a_major_version_package_by_the_element_before_it():
    assert build.exec_name("k8s.io/kubernetes/cmd/kube-apiserver") == "kube-apiserver"
    assert build.exec_name(build.ETCD_PACKAGE) == "server"
    assert set(build.PACKAGES) == {*build.KUBE_COMMANDS, "etcd"} and "kwok" not in build.BINARIES

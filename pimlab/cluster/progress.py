"""Progress for the user: one line per step with its elapsed time and, for a build, the time a
cold run takes; the output of the commands a step runs (Go, podman, mmdebstrap, gcc, ctr) goes
to the step's log file under `.lab/logs/` and reaches the terminal only when the step fails: its
last lines and the file's path.

On a terminal the running step's line is redrawn every second. Without one (a pipe, a CI job, or
CI=true) every line is printed once: a step's start (once it has run 2 s: a quick step is one
line), a heartbeat every minute while it runs, its end.

The expected time of a cold build is the last measured cold run of that step, kept in
`timings.json` under the cache root (a step that finds its output cached records nothing), or
the figure the builder documents when it was never measured here.

    progress = Progress(sys.stdout, layout.step_logs)
    with progress.step("controlplane", "control plane binaries", cold=25 * 60) as step:
        step.cached = build.is_built()
        build.build(step.log)

(`Progress.build_step` is that pattern; each builder offers its build as such a step.)

`run_lanes(progress, lane, lane)` runs lanes of steps side by side, one thread each (the Go
builds beside the image builds: on two cores the Go compiles take both, the image builds mostly
wait for the disk and the network). Each step is still its own line; on a terminal the redrawn
line shows the running step of every lane.

It sits in the package's floor with `layout`, `pki` and `procs`: the builders and the
orchestrators above it both use it.
"""

from __future__ import annotations

import io
import itertools
import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Callable, Iterator, Sequence, TypeVar

from pimlab.cluster.layout import Layout, cache_root

T = TypeVar("T")
TAIL_LINES = 30
HEARTBEAT_SECONDS = 60.0
START_DELAY_SECONDS = 2.0


class CommandFailed(RuntimeError):
    """A command a step ran exited non-zero; the message names it, its exit code and its log."""


def run(cmd: list[str], log: IO, *, cwd: Path | None = None, env: dict | None = None,
        capture: bool = False, what: str | None = None) -> str:
    """`cmd` with its output into `log`, or with its stdout returned when `capture` (its stderr
    still into `log`). Raises CommandFailed saying what failed and where its output is."""
    print("$ " + " ".join(cmd), file=log, flush=True)
    try:
        log.fileno()
        sink = log
    except (AttributeError, OSError, ValueError):  # an in-memory log: copy the output in
        sink = subprocess.PIPE
    proc = subprocess.run(cmd, cwd=cwd, env=env, text=True,
                          stdout=subprocess.PIPE if capture else sink,
                          stderr=sink if capture else subprocess.STDOUT)
    if sink is subprocess.PIPE:
        log.write((proc.stderr if capture else proc.stdout) or "")
    if proc.returncode != 0:
        raise CommandFailed(f"{what or ' '.join(cmd[:2])} failed (exit {proc.returncode}); "
                            f"see {getattr(log, 'name', 'its log')}")
    return proc.stdout if capture else ""


def timings_path() -> Path:
    return cache_root() / "timings.json"


def load_timings() -> dict[str, dict]:
    try:
        return json.loads(timings_path().read_text())
    except (OSError, ValueError):
        return {}


_TIMINGS_LOCK = threading.Lock()  # two lanes may end a step at once


def record_timing(key: str, seconds: float) -> None:
    """Remember a cold run of step `key` (written whole, then renamed: a reader never sees half)."""
    with _TIMINGS_LOCK:
        timings = load_timings()
        timings[key] = {"seconds": round(seconds, 1),
                        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        path = timings_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
        partial.write_text(json.dumps(timings, indent=2, sort_keys=True) + "\n")
        partial.replace(path)


def duration(seconds: float) -> str:
    """`0.4 s`, `42 s`, `3 min 05 s`, `1 h 02 min`."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def is_live(out: IO) -> bool:
    """Whether to redraw a line: `out` is a terminal and this is not a CI job."""
    if os.environ.get("CI", "").strip().lower() in ("1", "true", "yes"):
        return False
    try:
        return out.isatty()
    except (AttributeError, ValueError):
        return False


@dataclass
class Step:
    """One step as it runs: `log` is its log file (opened on first use, truncated); the body sets
    `cached` when it found its output already built (no cold time is recorded then), and may
    set `note`, said at its end (what it did: "imported", "present")."""

    key: str
    what: str
    path: Path
    expected: tuple[float, bool] | None  # a cold run's seconds, and whether measured here
    started: float = field(default_factory=time.monotonic)
    lane: int = field(default_factory=threading.get_ident)  # the thread that runs it
    cached: bool = False
    note: str = ""
    _log: IO | None = None

    @property
    def log(self) -> IO:
        if self._log is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._log = open(self.path, "w")
        return self._log

    def close(self) -> None:
        if self._log is not None:
            self._log.close()

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def expectation(self) -> str:
        if self.expected is None:
            return ""
        seconds, measured = self.expected
        return f"last cold run {duration(seconds)}" if measured else f"cold run ~{duration(seconds)}, estimated"


class Progress:
    """Says steps on `out` (nothing when it is None) and keeps their logs in `logs`. Without a
    terminal, a step's start is said once it has run `start_delay` seconds (a quick step is one
    line), then a heartbeat every `heartbeat` seconds."""

    def __init__(self, out: IO | None, logs: Path, heartbeat: float = HEARTBEAT_SECONDS,
                 start_delay: float = START_DELAY_SECONDS):
        self.out = out
        self.logs = logs
        self.heartbeat = heartbeat
        self.start_delay = start_delay
        self.live = out is not None and is_live(out)
        self._steps: list[Step] = []
        self._lock = threading.Lock()

    def say(self, message: str) -> None:
        """One line of information (above the running step's line on a terminal)."""
        self._write(message)

    @contextmanager
    def step(self, key: str, what: str, cold: float | None = None) -> Iterator[Step]:
        """Run the body as step `key`, said as `what`. `cold`: the documented duration of a cold
        run, for a build step (its measured cold runs are recorded and expected next time)."""
        expected = None
        if cold is not None:
            measured = load_timings().get(key, {}).get("seconds")
            expected = (measured, True) if measured is not None else (cold, False)
        step = Step(key, what, self.logs / f"{key}.log", expected)
        self._steps.append(step)
        stop = threading.Event()
        ticker = threading.Thread(target=self._tick, args=(step, stop), daemon=True)
        if self.out is not None:
            ticker.start()
        try:
            yield step
        except BaseException:
            self._end(step, stop, ticker)
            self._failed(step)
            raise
        self._end(step, stop, ticker)
        note = step.note or ("up to date" if step.cached else "")
        self._write(f"ok   {what}: {note + ', ' if note else ''}{duration(step.elapsed())}")
        if cold is not None and not step.cached:
            record_timing(key, step.elapsed())

    def build_step(self, key: str, what: str, cold: float, done: Callable[[], bool],
                   build: Callable[[IO], T]) -> T:
        """`build(log)` as step `key`: up to date when `done()` before it starts (then with no log
        file: the builder finds its output and says nothing)."""
        with self.step(key, what, cold) as step:
            step.cached = done()
            return build(io.StringIO() if step.cached else step.log)

    def _end(self, step: Step, stop: threading.Event, ticker: threading.Thread) -> None:
        stop.set()
        if ticker.is_alive():
            ticker.join()
        step.close()
        self._steps.remove(step)

    def _tick(self, step: Step, stop: threading.Event) -> None:
        """The running step's line: redrawn every second on a terminal; else its start once it
        has run `start_delay` seconds, then a heartbeat."""
        if self.live:
            self._draw(step)
            waits = itertools.repeat(1.0)
        else:
            waits = itertools.chain([self.start_delay], itertools.repeat(self.heartbeat))
        for wait in waits:
            if stop.wait(wait):
                return
            if self._innermost().get(step.lane, step) is not step:
                continue  # an inner step of its lane speaks for now
            self._draw(step)

    def _innermost(self) -> dict[int, Step]:
        """The innermost running step of each lane (thread)."""
        return {s.lane: s for s in list(self._steps)}

    def _draw(self, step: Step) -> None:
        if self.live:  # one line: the running step of every lane
            line = "  |  ".join(_line(s) for s in self._innermost().values())
            with self._lock:
                self.out.write("\r\033[K" + line)
                self.out.flush()
        else:
            self._write(_line(step))

    def _failed(self, step: Step) -> None:
        lines = [f"FAIL {step.what}: failed after {duration(step.elapsed())}"]
        if step.path.is_file() and step.path.stat().st_size:
            tail = step.path.read_text(errors="replace").splitlines()[-TAIL_LINES:]
            lines.append(f"     last {len(tail)} lines of {step.path}:")
            lines += [f"     | {line}" for line in tail]
            lines.append(f"     full log: {step.path}")
        self._write("\n".join(lines))

    def _write(self, text: str) -> None:
        if self.out is None:
            return
        with self._lock:
            if self.live:
                self.out.write("\r\033[K")
            print(text, file=self.out, flush=True)


def _line(step: Step) -> str:
    expectation = f" ({step.expectation()})" if step.expected else ""
    return f"..   {step.what}: {duration(step.elapsed())}{expectation}"


def run_lanes(progress: Progress, *lanes: Sequence[Callable[[Progress], object]]) -> None:
    """Each lane's steps in turn, the lanes side by side (a thread each). A lane stops at its
    first failure, the others run to their end; then the first failure is raised (its lines
    already say why)."""
    lanes = [lane for lane in lanes if lane]
    if len(lanes) <= 1:
        for step in (lanes[0] if lanes else ()):
            step(progress)
        return

    def run_lane(lane: Sequence[Callable[[Progress], object]]) -> None:
        for step in lane:
            step(progress)

    with ThreadPoolExecutor(max_workers=len(lanes), thread_name_prefix="lane") as pool:
        futures = [pool.submit(run_lane, lane) for lane in lanes]
    for future in futures:
        future.result()


def run_steps(*steps: Callable[[Progress], object], root: Path | str = ".") -> int:
    """A command line's steps in turn, said on stdout, logged in the `.lab/logs/` of the tree
    at `root`: 0, or 1 after the first that fails (its lines already show why)."""
    progress = for_tree(sys.stdout, root)
    try:
        for step in steps:
            step(progress)
    except RuntimeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


def for_tree(out: IO | None = sys.stdout, root: Path | str = ".") -> Progress:
    """A Progress on `out` with its logs in the `.lab/logs/` of the working tree at `root` (the
    current directory: where `make` runs the command lines)."""
    return Progress(out, Layout(Path(root).resolve()).step_logs)

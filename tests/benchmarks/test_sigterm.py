"""A benchmark sent SIGTERM runs its `finally` blocks (where it stops what it started)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_sigterm_unwinds_through_finally(tmp_path):
    marker = tmp_path / "stopped"
    script = (f"import sys, time; sys.path.insert(0, {str(ROOT)!r})\n"
              "from tests.benchmarks.sigterm import unwind_on_sigterm\n"
              "unwind_on_sigterm()\n"
              "try:\n    print('started', flush=True)\n    time.sleep(60)\n"
              f"finally:\n    open({str(marker)!r}, 'w').write('operator stopped')\n")
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "started"
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 128 + signal.SIGTERM
    assert time.monotonic() - started < 5
    assert marker.read_text() == "operator stopped"

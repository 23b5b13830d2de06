"""Entry points run as subprocesses, offline, and killed part-way (as a crash or an out-of-memory kill would)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OFFLINE = os.environ | {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def kill_when(proc: subprocess.Popen, ready: Callable[[], bool], timeout: float = 240) -> None:
    """SIGKILL ``proc`` as soon as ``ready()`` holds (polled every 20 ms); fail if it ends or times out first."""
    deadline = time.time() + timeout
    while not ready():
        assert proc.poll() is None, f"it ended before it could be killed:\n{proc.stdout.read() if proc.stdout else ''}"
        assert time.time() < deadline, "timed out waiting for the moment to kill it"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()

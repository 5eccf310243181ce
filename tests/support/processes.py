"""Stopping child processes the tests and benchmarks start."""

from __future__ import annotations

import subprocess
from typing import Any


def stop_process(process: subprocess.Popen[Any], grace_s: float) -> None:
    """SIGTERM, up to ``grace_s`` to exit cleanly, then SIGKILL."""
    process.terminate()
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)

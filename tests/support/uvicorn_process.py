"""Run a small ASGI app from a test's own directory as a real uvicorn process."""

from __future__ import annotations

import contextlib
import os
import queue
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

from tests.support.processes import stop_process

SRC = Path(__file__).resolve().parents[2] / "src"


@contextlib.contextmanager
def uvicorn_process(
    app_dir: Path, target: str, env: dict[str, str] | None = None
) -> Iterator[tuple[str, int, list[str]]]:
    """Run ``uvicorn --factory target`` on a random port; yield (base URL, port, stderr lines)."""
    command = [
        sys.executable, "-m", "uvicorn", "--factory", "--app-dir", str(app_dir), target,
        "--host", "127.0.0.1", "--port", "0", "--no-access-log",
    ]
    full_env = {
        **os.environ, **(env or {}), "PYTHONPATH": os.pathsep.join([str(SRC), str(app_dir)]),
    }
    process = subprocess.Popen(
        command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        env=full_env, text=True,
    )
    ports: queue.Queue[int | None] = queue.Queue()
    lines: list[str] = []

    def pump() -> None:  # keeps draining stderr so the server never blocks on a full pipe
        assert process.stderr is not None
        for line in process.stderr:
            lines.append(line)
            if match := re.search(r"Uvicorn running on http://127\.0\.0\.1:(\d+)", line):
                ports.put(int(match.group(1)))
        ports.put(None)

    threading.Thread(target=pump, daemon=True).start()
    try:
        port = ports.get(timeout=30)
        if port is None:
            raise RuntimeError("uvicorn exited at start:\n" + "".join(lines[-30:]))
        yield f"http://127.0.0.1:{port}", port, lines
    finally:
        stop_process(process, grace_s=10)

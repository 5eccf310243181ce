"""Pytest plugin: a real ``redis-server`` on 127.0.0.1, one per test, no persistence.

Install it with ``apt-get install -y redis-server`` (Debian). The fixture ``redis_server`` yields a
:class:`RedisServer` with ``url`` (``redis://127.0.0.1:<port>/0``) and ``stop()`` / ``start()`` /
``restart()`` (same port), so a test can take Redis away mid-run.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

START_TIMEOUT_S = 10.0


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (another process may still take it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One ``redis-server`` process bound to 127.0.0.1:``port``, persistence off."""

    def __init__(self, executable: str, port: int, workdir: Path) -> None:
        self.executable = executable
        self.port = port
        self.workdir = workdir
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        if self.process is not None and self.process.poll() is None:
            return
        log = self.workdir / "redis.log"
        self.process = subprocess.Popen(
            [
                self.executable, "--port", str(self.port), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "no", "--dir", str(self.workdir),
                "--logfile", str(log), "--daemonize", "no", "--protected-mode", "yes",
            ],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                tail = log.read_text(errors="replace")[-500:] if log.exists() else ""
                raise RuntimeError(f"redis-server exited at start on port {self.port}: {tail}")
            if _ping(self.port):
                return
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"redis-server did not answer PING within {START_TIMEOUT_S} s")

    def stop(self) -> None:
        """Kill the server at once (SIGKILL: an outage, not a clean shutdown)."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=10)
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()


@pytest.fixture
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A running Redis for this test; killed afterwards."""
    executable = shutil.which("redis-server")
    if executable is None:
        pytest.fail(
            "redis-server is not installed; install it with "
            "'apt-get update && apt-get install -y redis-server'",
            pytrace=False,
        )
    workdir = tmp_path_factory.mktemp("redis")
    server, error = None, ""
    for _attempt in range(3):  # the free port can be taken between probe and bind
        server = RedisServer(executable, free_port(), workdir)
        try:
            server.start()
            break
        except RuntimeError as exc:
            server, error = None, str(exc)
    if server is None:
        pytest.fail(f"redis-server could not be started: {error}", pytrace=False)
    try:
        yield server
    finally:
        server.stop()

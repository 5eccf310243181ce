"""Fixtures that run the app in-process (httpx ASGITransport, lifespan on) or as a real server."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from safegen.app import create_app
from safegen.settings import Settings

TEST_KEY = "test-key-not-a-secret-0123456789"
AUTH = {"Authorization": f"Bearer {TEST_KEY}"}
# An inference path named for a server whose scores a test compares with an in-process run
# (``auto`` measures at start, and a loaded host can time another path fastest).
PINNED_PATH = {"SAFEGEN_BACKEND": "torch", "SAFEGEN_PRECISION": "fp32"}


def settings_for(model_dir: Path, **overrides: object) -> Settings:
    """Settings for tests: the tiny model, one API key (sent by ``running_app``'s client)."""
    values: dict[str, object] = {
        "nsfw_model": str(model_dir), "max_batch_size": 8, "api_keys": [TEST_KEY],
        # the batch cap the tests set, not one measured on this host at start
        "auto_batch_size": False,
        # Tests that count model work send the same bytes again; the cache's own tests turn it on.
        "result_cache_size": 0,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@asynccontextmanager
async def running_app(
    app: FastAPI, headers: dict[str, str] | None = None
) -> AsyncIterator[httpx.AsyncClient]:
    """The app with its lifespan running, behind an httpx client sending the test key."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        sent = AUTH if headers is None else headers
        async with httpx.AsyncClient(
            transport=transport, base_url="http://safegen", headers=sent
        ) as client:
            yield client


@pytest.fixture
def make_client(tiny_vit_dir: Path) -> Callable[..., object]:
    """``async with make_client(**settings) as client``: an app built from test settings."""

    def factory(**overrides: object) -> object:
        return running_app(create_app(settings_for(tiny_vit_dir, **overrides)))

    return factory


# Cheap /generate sizes for tests: the tiny pipeline at 64x128, two steps.
SMALL = {"width": 64, "height": 128, "num_inference_steps": 2}


def generate_settings(vit_dir: Path, sd_dir: Path, **overrides: object) -> Settings:
    """Test settings with the tiny generator, loopback upload targets and quick retries."""
    values: dict[str, object] = {
        "generator_model": str(sd_dir),
        "upload_allowed_schemes": ["http", "https"],
        "upload_allow_loopback": True,
        "upload_backoff_s": [0.05, 0.05, 0.05],
        **overrides,
    }
    return settings_for(vit_dir, **values)


@pytest.fixture
def make_generate_client(tiny_vit_dir: Path, tiny_sd_dir: Path) -> Callable[..., object]:
    """``async with make_generate_client(classifier=None, **settings) as client``."""

    def factory(classifier: object = None, **overrides: object) -> object:
        settings = generate_settings(tiny_vit_dir, tiny_sd_dir, **overrides)
        return running_app(create_app(settings, classifier=classifier))  # type: ignore[arg-type]

    return factory


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ServerProcess:
    process: subprocess.Popen[bytes]
    url: str
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_server(env: dict[str, str], log_path: Path, timeout_s: float = 60) -> ServerProcess:
    """Start ``python -m safegen serve`` with ``env`` and wait until /readyz answers 200."""
    port = free_port()
    full_env = {
        **os.environ, "SAFEGEN_API_KEYS": TEST_KEY, **env,
        "SAFEGEN_HOST": "127.0.0.1", "SAFEGEN_PORT": str(port),
    }
    log = log_path.open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "safegen", "serve"], env=full_env, stdout=log, stderr=log
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited early:\n{log_path.read_text()}")
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return ServerProcess(process, url, log_path)
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"server not ready in {timeout_s}s:\n{log_path.read_text()}")


@pytest.fixture
def server_process(tmp_path: Path) -> Iterator[Callable[[dict[str, str]], ServerProcess]]:
    """Start real server processes; every one still running is killed at teardown."""
    started: list[ServerProcess] = []

    def start(env: dict[str, str]) -> ServerProcess:
        server = start_server(env, tmp_path / f"server-{len(started)}.log")
        started.append(server)
        return server

    yield start
    for server in started:
        if server.process.poll() is None:
            server.process.kill()
            server.process.wait(10)

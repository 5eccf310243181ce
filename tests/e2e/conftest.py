"""Real ``safegen serve`` processes shared by the client and browser tests of this folder."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.support.app_client import PINNED_PATH, ServerProcess, start_server
from tests.support.processes import stop_process


@pytest.fixture(scope="session")
def generator_server(
    tiny_vit_dir: Path, tiny_sd_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """One server with the tiny classifier and the tiny generator, files-per-request 16.

    Its inference path is named (``PINNED_PATH``), not measured by ``auto``: tests compare its
    scores with an in-process run, and on a loaded host ``auto`` can time another path fastest.
    """
    server = start_server(
        {
            **PINNED_PATH,
            "SAFEGEN_NSFW_MODEL": str(tiny_vit_dir),
            "SAFEGEN_GENERATOR_MODEL": str(tiny_sd_dir),
            "SAFEGEN_MAX_FILES_PER_REQUEST": "16",
            "SAFEGEN_MAX_BATCH_SIZE": "8",
            "SAFEGEN_RATE_LIMIT": "",
        },
        tmp_path_factory.mktemp("generator-server") / "server.log",
        timeout_s=120,
    )
    yield server
    stop_process(server.process, grace_s=10)

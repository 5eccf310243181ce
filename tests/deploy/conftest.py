"""Fixtures of the deployment tests: the container image (built once per session) and paths."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest

from tests.support.podman import (
    CACHE,
    BuiltImage,
    Podman,
    build_image,
    ensure_base_image,
    unavailable_reason,
)

IMAGE_TAG = "localhost/safegen:test"


# Figures of the container tests (build time, image size, start to ready), printed at the end of
# the run and kept in .cache/container/report.json.
_REPORT: dict[str, float] = {}


@pytest.fixture(scope="session")
def container_report() -> Iterator[dict[str, float]]:
    yield _REPORT
    if _REPORT:
        CACHE.mkdir(parents=True, exist_ok=True)
        (CACHE / "report.json").write_text(json.dumps(_REPORT, indent=2) + "\n", encoding="utf-8")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _REPORT:
        figures = ", ".join(f"{key} {value:g}" for key, value in _REPORT.items())
        terminalreporter.write_line(f"container: {figures}")


@pytest.fixture(scope="session")
def podman() -> Podman:
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    return Podman.configured()


@pytest.fixture(scope="session")
def safegen_image(podman: Podman, container_report: dict[str, float]) -> BuiltImage:
    """The repository's Dockerfile, built once per session (layer cache kept between runs)."""
    started = time.monotonic()
    ensure_base_image(podman)
    container_report["base_image_s"] = round(time.monotonic() - started, 1)
    image = build_image(podman, IMAGE_TAG)
    container_report["build_s"] = round(image.build_s, 1)
    container_report["image_mb"] = round(image.size_bytes / 1e6)
    return image

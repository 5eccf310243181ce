"""Shared fixtures. Support plugins build tiny models and start real servers on 127.0.0.1."""

from __future__ import annotations

import json
import os
import tempfile
from collections import defaultdict
from pathlib import Path

import pytest

# Tests never reach the Hugging Face hub: any hub id must come from the (empty) cache.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Caches the code writes (the ONNX export cache) go to a throwaway place, never the user's.
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="safegen-test-cache-")

pytest_plugins = [
    "tests.support.tiny_models",
    "tests.support.redis_server",
    "tests.support.s3servers",
    "tests.support.app_client",
    "tests.support.image_server",
]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Under mutmut, run the test files that take least time first.

    A mutant's run stops at its first failure (``-x``), and a unit test kills most mutants in
    milliseconds; mutmut's fork-server runner passes the tests in no particular order, so a
    mutant could spend minutes in fuzz and end-to-end tests before reaching one. Files stay whole
    so that module fixtures (servers, models) start once.
    """
    if "__mutmut_" not in os.environ.get("MUTANT_UNDER_TEST", ""):
        return
    try:  # mutmut runs the tests from mutants/, beside the durations it measured
        durations = json.loads(Path("mutmut-stats.json").read_text())["duration_by_test"]
    except (OSError, ValueError, KeyError):
        return
    file_time: defaultdict[str, float] = defaultdict(float)
    for item in items:
        file_time[item.nodeid.split("::")[0]] += durations.get(item.nodeid, 0.0)
    # A stable sort: the order within a file is kept.
    items.sort(key=lambda item: file_time[item.nodeid.split("::")[0]])

"""Engine settings resolved at construction (no model is loaded here)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from safegen.moderation.engine import ClassifierEngine, available_cpus
from tests.support.engines import engine_config


@pytest.mark.parametrize(("configured", "expected"), [(0, available_cpus()), (3, 3)])
def test_decode_threads_default_to_one_per_available_core(configured, expected):
    engine = ClassifierEngine(engine_config("unused", decode_threads=configured))
    assert engine.decode_threads == expected


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="Linux only")
def test_available_cpus_follows_the_affinity_mask():
    """A container or taskset narrowing the process to one core gives one decode thread."""
    code = (
        "import os; os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]}); "
        "from safegen.moderation.engine import available_cpus; print(available_cpus())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "1"

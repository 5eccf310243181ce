"""Fuzzing tests with bounded budgets; ``SAFEGEN_FUZZ_SCALE=20`` multiplies them for a deep run."""

from __future__ import annotations

import os

SCALE = max(1, int(os.environ.get("SAFEGEN_FUZZ_SCALE", "1")))
# CI runs the same examples every time (no flakiness); a deep run explores new ones.
DERANDOMIZE = SCALE == 1


def examples(count: int) -> int:
    """The example budget for one property: ``count`` in CI, ``count * SCALE`` on request."""
    return count * SCALE

"""Engine configs for tests: the service's own defaults (from Settings), then what a test varies."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from safegen.moderation.engine import EngineConfig
from safegen.settings import Settings


def engine_config(model: str | Path, **settings: Any) -> EngineConfig:
    """``EngineConfig`` for ``model`` with ``Settings``' defaults; ``settings``: Settings fields."""
    return EngineConfig.from_settings(Settings(nsfw_model=str(model), **settings))

"""Uploaders for tests: the service's own defaults (from Settings), loopback targets allowed."""

from __future__ import annotations

import dataclasses
from typing import Any

from safegen.delivery import UploadConfig, Uploader
from safegen.egress import EgressPolicy, SystemResolver
from safegen.settings import Settings

LOOPBACK = EgressPolicy(allowed_schemes=("http", "https"), allow_loopback=True)


def upload_config(**overrides: Any) -> UploadConfig:
    """``UploadConfig`` with ``Settings``' defaults, loopback allowed, then ``overrides``."""
    defaults = UploadConfig.from_settings(Settings())
    return dataclasses.replace(defaults, **{"policy": LOOPBACK, **overrides})


# The service's own resolver; its threads start on first use and are shared by every test.
resolve_locally = SystemResolver(threads=2, timeout_s=5.0)


def make_uploader(fake: Any = None, *, resolver: Any = resolve_locally, verify: Any = True,
                  sleep: Any = None, clock: Any = None, monotonic: Any = None,
                  **overrides: Any) -> Uploader:
    """An uploader over :func:`upload_config`; ``fake`` supplies ``sleep`` and ``clock``."""
    timing = {"sleep": fake.sleep, "clock": fake.clock} if fake is not None else {}
    chosen = {"sleep": sleep, "clock": clock, "monotonic": monotonic}
    timing.update({name: value for name, value in chosen.items() if value is not None})
    return Uploader(upload_config(**overrides), resolver, verify=verify, **timing)

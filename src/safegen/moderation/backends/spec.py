"""What a backend declares to join the registry, and the small facts every backend needs."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from safegen.moderation.base import Backend
    from safegen.moderation.loading import LoadedClassifier, Preprocessing


@dataclass(frozen=True)
class BuildRequest:
    """What a backend factory is asked for: a concrete device, precision and thread count."""

    device: str  # "cpu" or "cuda", resolved
    precision: str
    cache_dir: Path | None  # where exported files are cached (None: the user cache dir)
    threads: int  # intra-op threads, the same for every backend (SAFEGEN_TORCH_THREADS)


@dataclass(frozen=True)
class BackendSpec:
    """One backend as the registry sees it.

    ``bounds`` names the precisions the backend runs and, for each, its stated parity bound: the
    max |delta p| against torch fp32 on the same pixels, checked by tests/unit/test_backends.py.
    ``missing(device, precision)`` says in one line why the path cannot run here (not installed,
    wrong device), or returns None. ``worth_measuring(device, precision)`` is False for paths that
    run but are known to be slow on this hardware (bf16 without native bf16, fp16 on a CPU), so
    ``auto`` does not spend start-up time on them. ``versions()`` lists the libraries whose
    versions change the backend's speed (part of the cached choice's key).
    """

    name: str
    bounds: Mapping[str, float]
    factory: Callable[[LoadedClassifier, BuildRequest], Backend]
    missing: Callable[[str, str], str | None]
    worth_measuring: Callable[[str, str], bool]
    versions: Callable[[], dict[str, str]]
    rank: int = 100  # listing order, and the tie-break between equally fast paths

    @property
    def precisions(self) -> tuple[str, ...]:
        return tuple(self.bounds)


def module_available(*names: str) -> bool:
    return all(importlib.util.find_spec(name) is not None for name in names)


def cpu_has_native_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """True where the CPU computes bf16 in hardware (AVX-512 BF16 or AMX); else bf16 is slower."""
    try:
        flags = cpuinfo.read_text(encoding="ascii", errors="ignore")
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def cpu_has_int8_dot_product(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """True where int8 dot products accumulate without saturating (VNNI or AMX); AVX2 and plain
    AVX-512 saturate a 16-bit intermediate, which full-range int8 weights overflow."""
    try:
        flags = set(cpuinfo.read_text(encoding="ascii", errors="ignore").split())
    except OSError:
        return False
    return bool(flags & {"avx512_vnni", "avx_vnni", "amx_int8"})


def normalisation(prep: Preprocessing) -> tuple[list[float], list[float]]:
    """Per-channel ``(scale, shift)`` with ``x * scale + shift == (x * rescale - mean) / std``."""
    scale = [prep.rescale_factor / s for s in prep.std]
    shift = [-m / s for m, s in zip(prep.mean, prep.std, strict=True)]
    return scale, shift



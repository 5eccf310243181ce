"""The backend registry: every ``SPEC`` in this package, the paths that can run, and building one.

A path is a (backend, precision) pair such as ``openvino-bf16``. ``candidates`` turns the settings
(``SAFEGEN_BACKEND``, ``SAFEGEN_PRECISION``, ``SAFEGEN_AUTO_MAX_DRIFT``) into the paths worth
trying on this device; ``moderation/path_choice.py`` measures them when more than one is left.
Backends are found by scanning this package, so none is imported here by name.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from safegen.errors import ModelUnavailable
from safegen.moderation.backends.spec import BackendSpec, BuildRequest

if TYPE_CHECKING:
    from safegen.moderation.base import Backend
    from safegen.moderation.loading import LoadedClassifier


@dataclass(frozen=True, order=True)
class InferencePath:
    backend: str
    precision: str

    def __str__(self) -> str:
        return f"{self.backend}-{self.precision}"


@functools.cache
def specs() -> dict[str, BackendSpec]:
    """Every backend of this package by name, in rank order."""
    found: list[BackendSpec] = []
    for module in pkgutil.iter_modules([str(Path(__file__).parent)]):
        spec = getattr(importlib.import_module(f"{__package__}.{module.name}"), "SPEC", None)
        if isinstance(spec, BackendSpec):
            found.append(spec)
    return {spec.name: spec for spec in sorted(found, key=lambda s: (s.rank, s.name))}


def backend_names() -> list[str]:
    return list(specs())


def precision_names() -> list[str]:
    return sorted({p for spec in specs().values() for p in spec.precisions})


def get(name: str) -> BackendSpec:
    try:
        return specs()[name]
    except KeyError:
        raise ModelUnavailable(
            f"unknown SAFEGEN_BACKEND={name}; use auto or one of: {', '.join(backend_names())}"
        ) from None


def parity_bound(path: InferencePath | str) -> float:
    """The stated max |delta p| against torch fp32 of ``path`` (``"onnx-int8"`` or a path)."""
    if isinstance(path, str):
        backend, _, precision = path.partition("-")
        path = InferencePath(backend, precision)
    return get(path.backend).bounds[path.precision]


def candidates(backend: str, precision: str, device: str, max_drift: float) -> list[InferencePath]:
    """The paths worth trying on ``device`` (resolved), best-ranked first.

    A setting that names a backend or a precision is obeyed (a path that cannot run raises
    ``ModelUnavailable`` saying why); ``auto`` leaves out what is not installed, what is known to
    be slow on this hardware and, when the precision is ``auto``, every precision whose parity
    bound exceeds ``max_drift``.
    """
    if precision != "auto" and precision not in precision_names():
        raise ModelUnavailable(
            f"unknown SAFEGEN_PRECISION={precision}; use auto or one of: "
            f"{', '.join(precision_names())}"
        )
    chosen = [get(backend)] if backend != "auto" else list(specs().values())
    found: list[InferencePath] = []
    reasons: list[str] = []
    for spec in chosen:
        if precision != "auto" and precision not in spec.bounds:
            if backend != "auto":
                raise ModelUnavailable(
                    f"SAFEGEN_PRECISION={precision} is not supported by the {spec.name} backend; "
                    f"use one of: {', '.join(spec.precisions)}"
                )
            continue
        wanted = [precision] if precision != "auto" else [
            p for p, bound in spec.bounds.items()
            if bound <= max_drift and spec.worth_measuring(device, p)
        ]
        for p in wanted:
            why = spec.missing(device, p)
            if why is None:
                found.append(InferencePath(spec.name, p))
            elif backend != "auto":
                raise ModelUnavailable(why)
            else:
                reasons.append(why)
    if not found:
        detail = f" ({'; '.join(dict.fromkeys(reasons))})" if reasons else ""
        raise ModelUnavailable(
            f"no inference path for SAFEGEN_BACKEND={backend} SAFEGEN_PRECISION={precision} "
            f"on {device} within SAFEGEN_AUTO_MAX_DRIFT={max_drift:g}{detail}"
        )
    return found


def build(loaded: LoadedClassifier, path: InferencePath, device: str,
          cache_dir: Path | None = None) -> Backend:
    """Build ``path`` on ``device`` (resolved). Every backend gets torch's intra-op thread count
    (SAFEGEN_TORCH_THREADS, applied before this call), so paths compare on equal terms."""
    import torch

    spec = get(path.backend)
    if path.precision not in spec.bounds:
        raise ModelUnavailable(
            f"SAFEGEN_PRECISION={path.precision} is not supported by the {spec.name} backend; "
            f"use one of: {', '.join(spec.precisions)}"
        )
    why = spec.missing(device, path.precision)
    if why is not None:
        raise ModelUnavailable(why)
    request = BuildRequest(device, path.precision, cache_dir, torch.get_num_threads())
    return spec.factory(loaded, request)


def versions() -> dict[str, str]:
    """Versions of every installed backend's libraries (for keys of measured choices)."""
    found: dict[str, str] = {}
    for spec in specs().values():
        if spec.missing("cpu", "fp32") is None or spec.missing("cuda", "fp32") is None:
            found.update(spec.versions())
    return found

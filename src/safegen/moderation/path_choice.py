"""``auto`` by measurement: the fastest inference path on this host, and its batch-size cap.

Hosts differ more than a fixed table can say (the same CPU model has run bf16 GEMMs at 409 and at
879 GFLOP/s; OpenVINO beats torch on one, not on another; bigger batches are slower on some CPUs).
So at first start each candidate path (``registry.candidates``: installed, not known to be slow
here, parity bound within ``SAFEGEN_AUTO_MAX_DRIFT``) runs a few timed forward passes, and the
fastest wins. The winner then times a few batch sizes up to ``SAFEGEN_MAX_BATCH_SIZE`` and the
fastest per image becomes the batch cap (``SAFEGEN_AUTO_BATCH_SIZE``). The choice is cached per
host (CPU model and flags, threads, device, library versions, model shape, the candidates) and
logged at start with the figures that decided it. Readiness waits for it: the engine runs this
while loading. Seconds, not minutes: a path clearly slower than the best so far is dropped after
one timed pass.
"""

from __future__ import annotations

import copy
import gc
import json
import logging
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from safegen.devices import resolve_device
from safegen.moderation.backends import artifact_cache, registry
from safegen.moderation.backends.registry import InferencePath

if TYPE_CHECKING:
    from safegen.moderation.base import Backend
    from safegen.moderation.loading import LoadedClassifier

logger = logging.getLogger("safegen.moderation")

FORMAT_VERSION = 1
PROBE_BATCH = 8  # paths are compared at this batch size (or the cap, if smaller)
MIN_CALLS, MAX_CALLS, BUDGET_S = 2, 5, 1.0  # timed passes per measurement, after one warm-up
DROP_BELOW = 0.6  # one timed pass under this fraction of the best rate so far: no second pass
KEEP_CLIMBING = 0.95  # batch sizes: stop once the rate falls below this fraction of the best
TIE = 0.03  # rates within 3% are a tie (noise): the bigger batch wins, fewer passes per image


@dataclass(frozen=True)
class PathRequest:
    """The settings that bound the choice (from ``EngineConfig``)."""

    backend: str
    precision: str
    device: str
    cache_dir: Path | None
    max_drift: float
    max_batch_size: int
    tune_batch_size: bool


@dataclass
class Choice:
    """What was chosen and the figures that decided it (images/s per path and per batch size)."""

    path: str
    batch_size: int
    probe_batch: int = 0
    path_rates: dict[str, float] = field(default_factory=dict)
    batch_rates: dict[int, float] = field(default_factory=dict)
    seconds: float = 0.0  # time the measurement took
    measured_at: str = ""
    source: str = "settings"  # settings | measured | cached

    @property
    def inference_path(self) -> InferencePath:
        backend, _, precision = self.path.partition("-")
        return InferencePath(backend, precision)

    def describe(self) -> str:
        if self.source == "settings":
            return f"inference path {self.path}, batch cap {self.batch_size} (set by the settings)"
        paths = ", ".join(f"{p} {r:.3g}" for p, r in self.path_rates.items())
        sizes = ", ".join(f"{b}: {r:.3g}" for b, r in sorted(self.batch_rates.items()))
        when = (f"measured now in {self.seconds:.1f} s" if self.source == "measured"
                else f"measured {self.measured_at}, cached")
        return (f"inference path {self.path}, batch cap {self.batch_size}, chosen by measurement "
                f"on this host ({when}); img/s at batch {self.probe_batch}: {paths}"
                + (f"; {self.path} img/s by batch size: {sizes}" if sizes else ""))


def choose(loaded: LoadedClassifier, request: PathRequest) -> tuple[Backend, Choice]:
    """Build the backend ``request`` asks for, measuring what it leaves to ``auto``."""
    device = resolve_device(request.device)
    paths = registry.candidates(request.backend, request.precision, device, request.max_drift)
    if len(paths) == 1 and not request.tune_batch_size:
        choice = Choice(str(paths[0]), request.max_batch_size)
        backend = registry.build(loaded, paths[0], device, request.cache_dir)
    else:
        backend, choice = _measured_or_cached(loaded, request, device, paths)
    logger.info("%s", choice.describe(), extra={"inference_choice": asdict(choice)})
    return backend, choice


def host_facts(loaded: LoadedClassifier, request: PathRequest, device: str,
               paths: list[InferencePath]) -> dict[str, object]:
    """What a cached choice is valid for: this hardware, software, model shape and candidates."""
    import torch

    cpu = _cpuinfo()
    facts: dict[str, object] = {
        "format": FORMAT_VERSION,
        "cpu": cpu.get("model name", platform.processor()),
        "cpu_flags": sorted(set(cpu.get("flags", "").split())),
        "cpus": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "threads": torch.get_num_threads(),
        "device": device,
        "python": sys.version.split()[0],
        "versions": registry.versions(),
        "model": _model_shape(loaded),
        "candidates": [str(p) for p in paths],
        "max_batch_size": request.max_batch_size,
        "tune_batch_size": request.tune_batch_size,
    }
    if device == "cuda":
        facts["gpu"] = torch.cuda.get_device_name()
    return facts


def _cpuinfo(path: Path = Path("/proc/cpuinfo")) -> dict[str, str]:
    """The first processor's fields (Linux); empty elsewhere."""
    try:
        text = path.read_text(encoding="ascii", errors="ignore")
    except OSError:
        return {}
    fields: dict[str, str] = {}
    for line in text.split("\n\n", 1)[0].splitlines():
        name, _, value = line.partition(":")
        fields[name.strip()] = value.strip()
    return fields


def _model_shape(loaded: LoadedClassifier) -> dict[str, object]:
    """The model config without names and labels: what decides the compute, not the weights.

    ``transformers_version`` stays: ``to_dict`` writes the running release, whose model code
    decides the torch path's speed."""
    config = loaded.model.config.to_dict()  # type: ignore[attr-defined]
    drop = {"id2label", "label2id", "architectures"}
    shape = {k: v for k, v in config.items() if not k.startswith("_") and k not in drop}
    return {"config": shape, "input": list(loaded.preprocessing.size)}


def _measured_or_cached(loaded: LoadedClassifier, request: PathRequest, device: str,
                        paths: list[InferencePath]) -> tuple[Backend, Choice]:
    facts = host_facts(loaded, request, device, paths)
    key = artifact_cache.digest_of(facts)
    root = artifact_cache.cache_root(request.cache_dir, "choices")
    root.mkdir(parents=True, exist_ok=True)
    entry = root / f"choice-{key[:24]}.json"
    # One measurement per host at a time: workers starting together would slow each other down
    # and each pick from disturbed figures; the later ones read the first one's result.
    with artifact_cache.cache_lock(root):
        choice = _read(entry, key)
        if choice is None:
            backend, choice = measure(loaded, paths, device, request)
            staged = entry.with_name(f".{entry.name}.{os.getpid()}")
            staged.write_text(json.dumps({"key": key, "facts": facts, "choice": asdict(choice)}))
            staged.replace(entry)  # atomic: readers see no half-written choice
            return backend, choice
    return registry.build(loaded, choice.inference_path, device, request.cache_dir), choice


def _read(entry: Path, key: str) -> Choice | None:
    try:
        stored = json.loads(entry.read_text())
        if stored["key"] != key:
            return None
        fields = stored["choice"]
        fields["batch_rates"] = {int(b): r for b, r in fields["batch_rates"].items()}
        fields["source"] = "cached"
        return Choice(**fields)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        logger.warning("cached inference choice %s is unreadable; measuring again", entry.name)
        return None


def measure(loaded: LoadedClassifier, paths: list[InferencePath], device: str,
            request: PathRequest) -> tuple[Backend, Choice]:
    """Time each path on a copy of the model, build the fastest, then time its batch sizes."""
    started = time.monotonic()
    probe = min(PROBE_BATCH, request.max_batch_size)
    width, height = loaded.preprocessing.size
    largest = request.max_batch_size if request.tune_batch_size else probe
    pixels = np.random.default_rng(0).integers(0, 256, (largest, height, width, 3), np.uint8)
    rates: dict[InferencePath, float] = {}
    # Loosest bound first: usually the fastest, so slower exact paths are dropped after one pass.
    for path in sorted(paths, key=lambda p: (-registry.parity_bound(p), _rank(p))):
        if len(paths) == 1:
            break  # nothing to compare: only the batch size is measured
        logger.info("timing inference path %s (%d candidates)", path, len(paths))
        trial = registry.build(copy.deepcopy(loaded), path, device, request.cache_dir)
        rates[path] = images_per_second(trial, pixels[:probe], max(rates.values(), default=0.0))
        del trial
        gc.collect()  # free a loser's weights before the next path is built
    winner = pick_path(rates) if rates else paths[0]
    backend = registry.build(loaded, winner, device, request.cache_dir)
    batch_rates = {}
    if request.tune_batch_size:
        batch_rates = sweep_batch_sizes(backend, pixels, probe, request.max_batch_size)
    choice = Choice(
        path=str(winner),
        batch_size=pick_batch_size(batch_rates) if batch_rates else request.max_batch_size,
        probe_batch=probe,
        path_rates={str(p): round(r, 3) for p, r in sorted(rates.items(), key=lambda i: -i[1])},
        batch_rates={b: round(r, 3) for b, r in batch_rates.items()},
        seconds=round(time.monotonic() - started, 2),
        measured_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        source="measured",
    )
    return backend, choice


def _rank(path: InferencePath) -> int:
    return registry.get(path.backend).rank


def pick_path(rates: dict[InferencePath, float]) -> InferencePath:
    """The fastest; among paths within ``TIE`` of it (noise), the most exact, then by rank."""
    best = max(rates.values())
    close = [p for p, rate in rates.items() if rate >= best * (1 - TIE)]
    return min(close, key=lambda p: (registry.parity_bound(p), _rank(p)))


def images_per_second(backend: Backend, batch: np.ndarray, best_so_far: float = 0.0) -> float:
    """Best of a few timed passes after one warm-up (the minimum: least disturbed by others)."""
    backend.predict(batch)  # one-off costs: allocation, kernel selection, shape compilation
    times: list[float] = []
    deadline = time.perf_counter() + BUDGET_S
    while len(times) < MIN_CALLS or (len(times) < MAX_CALLS and time.perf_counter() < deadline):
        started = time.perf_counter()
        backend.predict(batch)
        times.append(time.perf_counter() - started)
        if len(times) == 1 and len(batch) / times[0] < DROP_BELOW * best_so_far:
            break  # clearly slower than a path already measured: one pass says enough
    return len(batch) / min(times)


def sweep_batch_sizes(backend: Backend, pixels: np.ndarray, probe: int,
                      cap: int) -> dict[int, float]:
    """Rates at powers of two around ``probe`` (and ``cap``), climbing while they improve."""
    sizes = sorted({s for s in (2 ** i for i in range(11)) if s <= cap} | {cap, probe})
    rates = {probe: images_per_second(backend, pixels[:probe])}
    index = sizes.index(probe)
    for step in (1, -1):  # up from the probe, then down
        position = index + step
        while 0 <= position < len(sizes):
            size = sizes[position]
            rates[size] = images_per_second(backend, pixels[:size])
            if rates[size] < KEEP_CLIMBING * max(rates.values()):
                break
            position += step
    return rates


def pick_batch_size(rates: dict[int, float]) -> int:
    """The fastest per image; among sizes within ``TIE`` of it, the biggest."""
    best = max(rates.values())
    return max(size for size, rate in rates.items() if rate >= best * (1 - TIE))

"""``auto`` by measurement: the fastest path and batch cap on this host, cached per host, logged
with the figures that decided it, and awaited by readiness."""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import os
import platform
import shutil
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from safegen.moderation import path_choice
from safegen.moderation.backends import registry
from safegen.moderation.backends.registry import InferencePath
from safegen.moderation.engine import ClassifierEngine
from safegen.moderation.loading import LoadedClassifier, load_classifier
from tests.support import images
from tests.support.engines import engine_config

P = InferencePath


@pytest.fixture(scope="module")
def tiny_loaded(tiny_vit_dir: Path) -> LoadedClassifier:
    return load_classifier(str(tiny_vit_dir))


def request(cache_dir: Path, **overrides: object) -> path_choice.PathRequest:
    values: dict[str, object] = {
        "backend": "auto", "precision": "auto", "device": "cpu", "cache_dir": cache_dir,
        "max_drift": 1e-2, "max_batch_size": 8, "tune_batch_size": True,
    }
    values.update(overrides)
    return path_choice.PathRequest(**values)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("exports")


@pytest.fixture
def cache_dir(exports: Path) -> Path:
    """A cache dir with no choice in it; exports are shared (each costs seconds to build)."""
    shutil.rmtree(exports / "safegen-choices", ignore_errors=True)
    return exports


@pytest.fixture
def timings(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Stand-in figures: a path's first timing gives ``rates[path]`` (img/s at the probe batch),
    later ones ``by_size[batch]``; ``calls`` records each (path, batch). Backends are real."""
    state: dict[str, Any] = {"rates": {}, "by_size": {}, "calls": []}

    def fake(backend: Any, batch: np.ndarray, best_so_far: float = 0.0) -> float:
        path = f"{backend.name}-{backend.precision}"
        first = path not in [done for done, _ in state["calls"]]
        state["calls"].append((path, len(batch)))
        if first and path in state["rates"]:
            return float(state["rates"][path])
        return float(state["by_size"].get(len(batch), 1.0))

    monkeypatch.setattr(path_choice, "images_per_second", fake)
    return state


def test_fastest_path_wins_ties_go_to_the_more_exact():
    assert path_choice.pick_path({P("torch", "fp32"): 5.0, P("openvino", "bf16"): 19.1,
                                  P("torch", "bf16"): 15.8}) == P("openvino", "bf16")
    # within 3% is noise: the smaller parity bound wins
    assert path_choice.pick_path({P("onnx", "fp32"): 10.0, P("torch", "bf16"): 10.2}) == P(
        "onnx", "fp32")
    assert path_choice.pick_path({P("torch", "fp32"): 10.0, P("openvino", "bf16"): 10.2}) == P(
        "torch", "fp32")
    assert path_choice.pick_path({P("onnx", "fp32"): 97.0, P("torch", "bf16"): 100.0}) == P(
        "onnx", "fp32")  # exactly 3% slower is still a tie


def test_batch_cap_is_the_fastest_per_image_ties_to_the_bigger():
    # the host: 15.0 img/s at batch 8, 12.6 at batch 29-32
    assert path_choice.pick_batch_size({4: 13.9, 8: 15.0, 16: 14.1, 32: 12.6}) == 8
    assert path_choice.pick_batch_size({8: 100.0, 16: 101.0, 32: 99.5}) == 32  # GPU-like
    assert path_choice.pick_batch_size({8: 100.0, 16: 97.0}) == 16  # 3% slower: still a tie


class ScriptedBackend:
    """A backend whose passes take scripted seconds on a fake clock: ``seconds(batch size, call
    number)``; every call's batch size is recorded. Durations are binary fractions, so sums are
    exact and a pass that ends exactly on the one-second budget is a pass within it."""

    def __init__(self, clock: list[float], seconds: Callable[[int, int], float]) -> None:
        self.clock, self.seconds, self.calls = clock, seconds, list[int]()

    def predict(self, batch: np.ndarray) -> np.ndarray:
        self.calls.append(len(batch))
        self.clock[0] += self.seconds(len(batch), len(self.calls))
        return np.zeros((len(batch), 2), np.float32)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    now = [1000.0]
    monkeypatch.setattr(path_choice, "time", SimpleNamespace(perf_counter=lambda: now[0]))
    return now


def timed(clock: list[float], passes: list[float], batch: int = 8,
          best_so_far: float | None = None) -> tuple[float, list[int]]:
    """images_per_second over scripted passes (the first is the warm-up): (rate, calls). Without
    ``best_so_far`` the call leaves it out, as the batch-size sweep does."""
    backend = ScriptedBackend(clock, lambda size, call: passes[call - 1])
    pixels = np.zeros((batch, 1), np.uint8)
    given = () if best_so_far is None else (best_so_far,)
    return path_choice.images_per_second(backend, pixels, *given), backend.calls  # type: ignore[arg-type]


def test_a_path_is_timed_after_one_warm_up_as_its_best_pass_within_about_a_second(clock):
    """docs/performance.md: one warm-up pass, then the best of 2-5 passes within about a second."""
    rate, calls = timed(clock, [10.0, 0.25, 0.125, 0.5, 0.125, 0.25])
    assert rate == 8 / 0.125  # the warm-up (10 s) is not counted; the best pass is
    assert len(calls) == 1 + 4  # the 4th pass starts at 0.875 s; the 5th would at 1.0 s
    rate, calls = timed(clock, [1.0, 0.75, 0.5, 0.25])
    assert (rate, len(calls)) == (8 / 0.5, 1 + 2)  # two passes even past the second
    rate, calls = timed(clock, [1.0] + [0.0625] * 10)
    assert (rate, len(calls)) == (8 / 0.0625, 1 + 5)  # at most five
    rate, calls = timed(clock, [1.0, 2.0, 2.0, 2.0], batch=1)
    assert (rate, len(calls)) == (0.5, 1 + 2)  # however slow, nothing to compare with: two


def test_a_path_far_below_the_best_so_far_gets_one_pass(clock):
    """docs/performance.md: a path whose first timed pass is under 60% of the best so far gets no
    second one; at 60% or above it is timed in full."""
    rate, calls = timed(clock, [1.0, 0.25, 0.25, 0.25], best_so_far=100.0)
    assert (rate, len(calls)) == (32.0, 1 + 1)  # 32 img/s < 60
    rate, calls = timed(clock, [1.0, 0.125, 0.25, 0.5, 0.5], best_so_far=100.0)
    assert (rate, len(calls)) == (64.0, 1 + 4)  # 64 img/s: not dropped
    rate, calls = timed(clock, [1.0, 1.0, 1.0], batch=6, best_so_far=10.0)
    assert (rate, len(calls)) == (6.0, 1 + 2)  # exactly 60% is not under it


def sweep(clock: list[float], rates: dict[int, float], probe: int, cap: int) -> dict[int, float]:
    backend = ScriptedBackend(clock, lambda size, call: size / rates[size])
    return path_choice.sweep_batch_sizes(backend, np.zeros((cap, 1), np.uint8), probe, cap)  # type: ignore[arg-type]


def test_batch_sizes_climb_while_the_rate_holds(clock):
    """docs/performance.md: powers of two around the probe, up to the cap, climbing while the rate
    holds, in both directions."""
    faster_small = {1: 64.0, 2: 32.0, 4: 16.0, 8: 8.0, 16: 4.0}
    assert sweep(clock, faster_small, probe=8, cap=16) == faster_small  # down to 1
    falls_then_rises = {4: 16.0, 8: 32.0, 16: 8.0, 32: 64.0, 48: 64.0}
    assert sweep(clock, falls_then_rises, probe=8, cap=48) == {4: 16.0, 8: 32.0, 16: 8.0}
    flat = {1: 8.0, 2: 8.0, 4: 8.0, 8: 8.0, 16: 8.0, 29: 8.0}
    assert sweep(clock, flat, probe=8, cap=29) == flat  # the cap itself is measured


def test_measurement_picks_the_fastest_caches_it_and_logs_the_figures(
    tiny_loaded, cache_dir, timings, caplog, tmp_path, monkeypatch
):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "user-cache"))
    timings["rates"] = {"torch-fp32": 10.0, "onnx-fp32": 30.0, "openvino-fp32": 20.0}
    timings["by_size"] = {8: 30.0, 16: 31.5, 4: 25.0}
    caplog.set_level(logging.INFO, logger="safegen.moderation")
    paths = registry.candidates("auto", "auto", "cpu", 1e-2)
    backend, choice = path_choice.choose(tiny_loaded, request(cache_dir, max_batch_size=16))
    assert (backend.name, backend.precision) == ("onnx", "fp32")
    assert not (tmp_path / "user-cache" / "safegen").exists()  # the export from the cache dir
    assert choice.source == "measured"
    assert choice.path == "onnx-fp32"
    assert choice.batch_size == 16
    assert set(choice.path_rates) == {str(p) for p in paths}
    measured = [path for path, size in timings["calls"] if size == 8]
    assert set(measured) >= {str(p) for p in paths}  # every candidate timed at the probe batch
    logged = [r for r in caplog.records if "chosen by measurement" in r.getMessage()]
    assert len(logged) == 1
    message = logged[0].getMessage()
    assert "onnx-fp32, batch cap 16" in message
    assert "torch-fp32 10" in message  # the figures that decided it
    assert "16: 31.5" in message
    entries = list((cache_dir / "safegen-choices").glob("choice-*.json"))
    assert len(entries) == 1
    stored = json.loads(entries[0].read_text())
    assert stored["choice"]["path"] == "onnx-fp32"
    assert stored["facts"]["candidates"] == [str(p) for p in paths]

    # A second start on the same host reads the choice back: nothing is timed again.
    timings["calls"] = []
    backend, again = path_choice.choose(tiny_loaded, request(cache_dir, max_batch_size=16))
    assert timings["calls"] == []
    assert again.source == "cached"
    assert (again.path, again.batch_size) == ("onnx-fp32", 16)
    assert backend.name == "onnx"
    assert "cached" in caplog.records[-1].getMessage()


def test_measurement_times_loosest_bounds_first_against_the_best_so_far(
    tiny_vit_dir, cache_dir, tmp_path, monkeypatch, caplog
):
    """docs/performance.md: the loosest bounds go first, each path is timed knowing the best rate
    so far (a path far below it gets one pass), exports go to the configured cache dir, and each
    trial runs on a copy of the model: the winner is built as if nothing else had been timed
    (torch-bf16 casts its model's weights). The log names each path as it is timed; the record
    keeps the probe batch, the time the measurement took, and when."""
    loaded = load_classifier(str(tiny_vit_dir))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "user-cache"))
    rates = {"torch-bf16": 12.5, "onnx-fp32": 15.5, "torch-fp32": 20.0}
    calls: list[tuple[str, int, float]] = []

    def fake(backend: Any, batch: np.ndarray, best_so_far: float = 0.0) -> float:
        path = f"{backend.name}-{backend.precision}"
        calls.append((path, len(batch), best_so_far))
        return rates[path]

    monkeypatch.setattr(path_choice, "images_per_second", fake)
    ticks = iter([100.0, 103.125])  # the measurement's start and end on a scripted clock
    monkeypatch.setattr(path_choice, "time", SimpleNamespace(monotonic=lambda: next(ticks)))
    caplog.set_level(logging.INFO, logger="safegen.moderation")
    paths = [P("torch", "fp32"), P("onnx", "fp32"), P("torch", "bf16")]
    before = datetime.now(timezone.utc).replace(microsecond=0)
    backend, choice = path_choice.measure(loaded, paths, "cpu",
                                          request(cache_dir, tune_batch_size=False))
    after = datetime.now(timezone.utc)
    assert calls[0] == ("torch-bf16", 8, 0.0)  # the loosest bound (1e-2) first
    assert {path for path, _, _ in calls[1:]} == {"onnx-fp32", "torch-fp32"}
    for index, (_, batch, best_so_far) in enumerate(calls):
        assert batch == 8
        assert best_so_far == max([rates[path] for path, _, _ in calls[:index]], default=0.0)
    timing = [r.getMessage() for r in caplog.records
              if r.getMessage().startswith("timing inference path")]
    assert timing == [f"timing inference path {path} (3 candidates)" for path, _, _ in calls]
    assert not (tmp_path / "user-cache" / "safegen").exists()  # no export outside the cache dir

    assert (backend.name, backend.precision) == ("torch", "fp32")
    width, height = loaded.preprocessing.size
    pixels = np.random.default_rng(1).integers(0, 256, (2, height, width, 3), np.uint8)
    untouched = registry.build(load_classifier(str(tiny_vit_dir)), P("torch", "fp32"), "cpu")
    np.testing.assert_allclose(backend.predict(pixels), untouched.predict(pixels), atol=1e-6)

    assert choice.probe_batch == 8
    assert choice.seconds == 3.12  # to the hundredth
    assert before <= datetime.fromisoformat(choice.measured_at) <= after
    assert ("(measured now in 3.1 s); img/s at batch 8: torch-fp32 20, onnx-fp32 15.5, "
            "torch-bf16 12.5") in choice.describe()  # fastest first


def test_a_change_of_host_facts_measures_again(tiny_loaded, cache_dir, timings):
    import torch

    path_choice.choose(tiny_loaded, request(cache_dir))
    threads = torch.get_num_threads()
    timings["calls"] = []
    torch.set_num_threads(1 if threads > 1 else 2)  # another thread count: another host
    try:
        _, choice = path_choice.choose(tiny_loaded, request(cache_dir))
    finally:
        torch.set_num_threads(threads)
    assert choice.source == "measured"
    assert timings["calls"]
    assert len(list((cache_dir / "safegen-choices").glob("choice-*.json"))) == 2


def test_cpu_facts_are_read_from_the_first_processor_whatever_its_bytes(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_bytes(b"processor\t: 0\nmodel name\t: Vendor\xe2\x84\xa2 CPU\n"
                        b"flags\t\t: avx2 fma\n\nprocessor\t: 1\nmodel name\t: Other\n")
    facts = path_choice._cpuinfo(cpuinfo)
    assert (facts["model name"], facts["flags"]) == ("Vendor CPU", "avx2 fma")
    assert path_choice._cpuinfo(tmp_path / "absent") == {}


def test_a_cached_choice_records_the_facts_it_is_valid_for(tiny_loaded, cache_dir, timings):
    import torch

    path_choice.choose(tiny_loaded, request(cache_dir))
    (entry,) = (cache_dir / "safegen-choices").glob("choice-*.json")
    facts = json.loads(entry.read_text())["facts"]
    assert facts["python"] == platform.python_version()
    assert (facts["device"], facts["threads"]) == ("cpu", torch.get_num_threads())
    assert facts["cpus"] == sorted(os.sched_getaffinity(0))  # the cores this process may use


def test_the_cpu_in_the_facts_comes_from_cpuinfo_or_the_platform(
    tiny_loaded, cache_dir, monkeypatch
):
    def facts_with(cpuinfo: dict[str, str]) -> dict[str, object]:
        monkeypatch.setattr(path_choice, "_cpuinfo", lambda: cpuinfo)
        return path_choice.host_facts(tiny_loaded, request(cache_dir), "cpu", [])

    x86 = facts_with({"model name": "Vendor CPU", "flags": "fma avx2 fma"})
    assert (x86["cpu"], x86["cpu_flags"]) == ("Vendor CPU", ["avx2", "fma"])
    arm = facts_with({"Features": "fp asimd"})  # no model name, no flags line
    assert (arm["cpu"], arm["cpu_flags"]) == (platform.processor(), [])
    assert "gpu" not in arm
    import torch

    monkeypatch.setattr(torch.cuda, "get_device_name", lambda: "Test GPU")
    cuda = path_choice.host_facts(tiny_loaded, request(cache_dir), "cuda", [])
    assert cuda["gpu"] == "Test GPU"  # a choice measured on one GPU model is not another's


def test_the_model_in_the_facts_is_its_compute_not_its_labels(
    tiny_loaded, cache_dir, monkeypatch
):
    def model_facts(loaded: LoadedClassifier) -> object:
        return path_choice.host_facts(loaded, request(cache_dir), "cpu", [])["model"]

    relabelled = copy.copy(tiny_loaded)
    relabelled.model = copy.deepcopy(tiny_loaded.model)
    relabelled.model.config.id2label = {0: "safe", 1: "unsafe"}  # type: ignore[attr-defined]
    relabelled.model.config.label2id = {"safe": 0, "unsafe": 1}  # type: ignore[attr-defined]
    relabelled.model.config.architectures = ["OtherName"]  # type: ignore[attr-defined]
    current = model_facts(tiny_loaded)
    assert model_facts(relabelled) == current  # the same measurement holds
    import transformers.configuration_utils

    # Another transformers release runs other model code: measured again.
    monkeypatch.setattr(transformers.configuration_utils, "__version__", "0.0.1")
    assert model_facts(tiny_loaded) != current


def test_unreadable_cached_choice_is_measured_again(tiny_loaded, cache_dir, timings, caplog):
    path_choice.choose(tiny_loaded, request(cache_dir))
    (entry,) = (cache_dir / "safegen-choices").glob("choice-*.json")
    entry.write_text('{"key": ')  # a torn write
    timings["calls"] = []
    _, choice = path_choice.choose(tiny_loaded, request(cache_dir))
    assert choice.source == "measured"
    assert "unreadable" in caplog.text
    assert json.loads(entry.read_text())["choice"]["path"] == choice.path


def test_a_path_named_by_the_settings_is_not_measured(tiny_loaded, cache_dir, timings):
    backend, choice = path_choice.choose(
        tiny_loaded,
        request(cache_dir, backend="torch", precision="fp32", tune_batch_size=False),
    )
    assert (backend.name, backend.precision) == ("torch", "fp32")
    assert (choice.source, choice.path, choice.batch_size) == ("settings", "torch-fp32", 8)
    assert timings["calls"] == []
    assert not (cache_dir / "safegen-choices").exists()


def test_a_named_path_still_gets_its_batch_cap_measured(tiny_loaded, cache_dir, timings):
    timings["by_size"] = {8: 20.0, 4: 24.0, 2: 22.0}
    _, choice = path_choice.choose(
        tiny_loaded, request(cache_dir, backend="torch", precision="fp32")
    )
    assert choice.source == "measured"
    assert choice.path_rates == {}  # one path: nothing to compare
    assert choice.batch_size == 4


def test_real_measurement_on_the_tiny_model(tiny_loaded, cache_dir):
    """No stand-ins: every candidate really runs, and the figures are real rates."""
    _, choice = path_choice.choose(tiny_loaded, request(cache_dir))
    assert choice.path in choice.path_rates
    assert choice.path_rates[choice.path] == max(choice.path_rates.values()) or (
        choice.path_rates[choice.path] >= (1 - path_choice.TIE) * max(choice.path_rates.values())
    )
    assert all(rate > 0 for rate in choice.path_rates.values())
    assert choice.batch_size in choice.batch_rates
    assert 1 <= choice.batch_size <= 8


async def test_engine_is_ready_only_after_the_choice_and_batches_within_its_cap(
    tiny_vit_dir, cache_dir, timings
):
    timings["by_size"] = {8: 20.0, 4: 24.0, 2: 21.0}
    config = engine_config(tiny_vit_dir, device="cpu", backend="torch", precision="fp32",
                           model_cache_dir=cache_dir, max_batch_size=8, max_batch_wait_ms=50)
    engine = ClassifierEngine(config)
    sizes: list[int] = []
    engine.metrics.batch_size.observe = sizes.append  # type: ignore[method-assign]
    starting = asyncio.create_task(engine.start())
    await asyncio.sleep(0)
    assert not engine.ready
    await starting
    try:
        assert engine.ready
        assert engine.choice is not None
        assert engine.choice.batch_size == 4
        assert engine.max_batch_size == 4
        payloads = [images.jpeg(i, (64, 64)) for i in range(12)]
        results = await asyncio.gather(*(engine.classify_bytes([p]) for p in payloads))
        assert all(not isinstance(r[0], Exception) for r in results)
    finally:
        await engine.stop()
    assert sum(sizes) == 12
    assert max(sizes) <= 4


def test_batch_sizes_are_timed_with_that_many_images(tiny_loaded, cache_dir, timings):
    """The sweep times real batches of each size, up to the configured cap."""
    timings["by_size"] = {s: float(s) for s in (1, 2, 4, 8, 16, 32, 48)}
    _, choice = path_choice.choose(tiny_loaded, request(cache_dir, max_batch_size=48))
    assert choice.batch_size == 48
    sizes = {size for _, size in timings["calls"]}
    assert {8, 16, 32, 48} <= sizes
    assert max(sizes) == 48

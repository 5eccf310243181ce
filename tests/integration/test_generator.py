"""DiffusersGenerator with a real (tiny, locally built) Stable Diffusion pipeline."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from safegen.errors import (
    GenerationFailed,
    InvalidInput,
    ModelUnavailable,
    NotReady,
    Overloaded,
)
from safegen.generation import DiffusersGenerator, GenerationRequest, Generator
from safegen.generation.diffusers_backend import build_generator
from safegen.settings import Settings


def tiny_generator(model: str | Path, **settings: Any) -> DiffusersGenerator:
    """The generator the service builds for ``model`` on the CPU, with ``settings`` changed."""
    generator = build_generator(Settings(generator_model=str(model), device="cpu", **settings))
    assert generator is not None
    return generator


def _req(**overrides: Any) -> GenerationRequest:
    fields: dict[str, Any] = {
        "prompt": "a castle at dusk",
        "negative_prompt": None,
        "width": 128,
        "height": 256,
        "num_inference_steps": 4,
        "seed": 7,
    }
    return GenerationRequest(**{**fields, **overrides})


def _pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


@pytest.fixture(scope="module")
def generator(tiny_sd_dir: Path) -> Iterator[DiffusersGenerator]:
    # The generator's state lives in its own worker thread, not in an event loop, so one started
    # instance can serve every test's loop.
    gen = tiny_generator(tiny_sd_dir)
    asyncio.run(gen.start())
    yield gen
    asyncio.run(gen.stop())


def test_loads_the_local_pipeline_without_safety_checker(generator: DiffusersGenerator) -> None:
    import torch

    assert isinstance(generator, Generator)
    assert type(generator.pipeline).__name__ == "StableDiffusionPipeline"
    assert generator.pipeline.safety_checker is None
    assert generator.pipeline.unet.dtype == torch.float32
    assert generator.device == "cpu"
    assert generator.pipeline._progress_bar_config == {"disable": True}


@pytest.mark.slow  # about 2-3 s alone on 2 cores, up to 6 s when the cores are shared
async def test_full_size_request(generator: DiffusersGenerator) -> None:
    started = time.perf_counter()
    image = await generator.generate(_req(width=512, height=1024, num_inference_steps=15))
    elapsed = time.perf_counter() - started
    assert image.size == (512, 1024)
    assert image.mode == "RGB"
    assert _pixels(image).std() > 1  # not a blank (e.g. safety-checker black) image
    print(f"512x1024, 15 steps: {elapsed:.2f} s")


async def test_seed_gives_identical_pixels(generator: DiffusersGenerator) -> None:
    first = await generator.generate(_req(seed=1))
    again = await generator.generate(_req(seed=1))
    other = await generator.generate(_req(seed=2))
    assert np.array_equal(_pixels(first), _pixels(again))
    assert not np.array_equal(_pixels(first), _pixels(other))


async def test_negative_prompt_is_used(generator: DiffusersGenerator) -> None:
    plain = await generator.generate(_req())
    negative = await generator.generate(_req(negative_prompt="blurry, text, watermark"))
    assert negative.size == (128, 256)
    # Classifier-free guidance embeds the negative prompt: same seed, different image.
    assert not np.array_equal(_pixels(plain), _pixels(negative))


async def test_guidance_scale_only_when_given(
    generator: DiffusersGenerator, monkeypatch: pytest.MonkeyPatch
) -> None:
    pipeline_type = type(generator.pipeline)
    real_call = pipeline_type.__call__
    seen: list[dict[str, Any]] = []

    def spy(self: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append(kwargs)
        return real_call(self, *args, **kwargs)

    monkeypatch.setattr(pipeline_type, "__call__", spy)
    default = await generator.generate(_req())
    unguided = await generator.generate(_req(guidance_scale=1.0))
    assert "guidance_scale" not in seen[0]
    assert seen[1]["guidance_scale"] == 1.0
    assert not np.array_equal(_pixels(default), _pixels(unguided))


async def test_concurrent_requests_are_serialised_off_the_loop(
    generator: DiffusersGenerator, monkeypatch: pytest.MonkeyPatch
) -> None:
    pipeline_type = type(generator.pipeline)
    real_call = pipeline_type.__call__
    active, peak, threads = 0, 0, set()
    lock = threading.Lock()
    loop = asyncio.get_running_loop()
    loop_answered: list[bool] = []

    def counting(self: Any, *args: Any, **kwargs: Any) -> Any:
        nonlocal active, peak
        with lock:
            active += 1
            peak = max(peak, active)
            threads.add(threading.current_thread().name)
        try:
            # While this image is being generated, the event loop must still run other work: a
            # loop blocked on this call would never run the probe (and the wait would time out).
            probe = asyncio.run_coroutine_threadsafe(asyncio.sleep(0, result=True), loop)
            loop_answered.append(probe.result(timeout=30))
            return real_call(self, *args, **kwargs)
        finally:
            with lock:
                active -= 1

    monkeypatch.setattr(pipeline_type, "__call__", counting)
    wide, tall = await asyncio.gather(
        generator.generate(_req(width=256, height=128, seed=3)),
        generator.generate(_req(width=128, height=320, seed=4, num_inference_steps=6)),
    )
    assert wide.size == (256, 128)
    assert tall.size == (128, 320)
    assert peak == 1
    assert len(threads) == 1
    assert threads.pop().startswith("safegen-generate")
    assert loop_answered == [True, True]  # the event loop ran while each image was generated


async def test_a_full_queue_answers_overloaded_at_once(
    generator: DiffusersGenerator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(generator, "max_pending", 2)
    results = await asyncio.gather(
        *(generator.generate(_req(seed=i)) for i in range(3)), return_exceptions=True
    )
    assert [type(r) for r in results] == [Image.Image, Image.Image, Overloaded]
    assert isinstance(results[2], Overloaded)
    assert results[2].retry_after_s >= 1
    assert generator.pending == 0


async def test_a_cancelled_queued_request_frees_its_slot(
    generator: DiffusersGenerator, monkeypatch: pytest.MonkeyPatch
) -> None:
    pipeline_type = type(generator.pipeline)
    real_call = pipeline_type.__call__
    gate, calls = threading.Event(), []

    def gated(self: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs["generator"].initial_seed())
        assert gate.wait(timeout=30)
        return real_call(self, *args, **kwargs)

    monkeypatch.setattr(pipeline_type, "__call__", gated)
    running = asyncio.create_task(generator.generate(_req(seed=1)))
    queued = asyncio.create_task(generator.generate(_req(seed=2)))
    for _ in range(500):
        await asyncio.sleep(0.01)
        if calls and generator.pending == 2:
            break
    assert generator.pending == 2
    queued.cancel()
    with pytest.raises(asyncio.CancelledError):
        await queued
    assert generator.pending == 1  # released as soon as it was cancelled, while still queued
    gate.set()
    assert (await running).size == (128, 256)
    assert generator.pending == 0
    assert calls == [1]  # the cancelled request never reached the pipeline


async def test_pipeline_error_is_a_fixed_message_and_the_generator_survives(
    generator: DiffusersGenerator, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(self: Any, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("CUDA out of memory at /secret/internal/path")

    with pytest.MonkeyPatch.context() as patch, caplog.at_level(logging.ERROR):
        patch.setattr(type(generator.pipeline), "__call__", broken)
        with pytest.raises(GenerationFailed) as info:
            await generator.generate(_req())
    assert info.value.message == "image generation failed"
    assert "secret" not in str(info.value)
    logged = [r for r in caplog.records if r.name == "safegen.generation" and r.exc_info]
    assert logged
    assert "secret" in str(logged[0].exc_info[1])
    image = await generator.generate(_req())
    assert image.size == (128, 256)


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"width": 500}, "width"),
        ({"height": 0}, "height"),
        ({"height": -64}, "height"),
        ({"num_inference_steps": 0}, "num_inference_steps"),
        ({"seed": -1}, "seed"),
    ],
)
async def test_invalid_requests_name_the_field(
    generator: DiffusersGenerator, overrides: dict[str, Any], field: str
) -> None:
    with pytest.raises(InvalidInput) as info:
        await generator.generate(_req(**overrides))
    assert info.value.field == field
    assert field in info.value.message


async def test_not_ready_before_start_and_after_stop(tiny_sd_dir: Path) -> None:
    gen = tiny_generator(tiny_sd_dir, generator_warmup_steps=0)
    with pytest.raises(NotReady):
        await gen.generate(_req())
    async with gen:
        assert (await gen.generate(_req(width=64, height=64, num_inference_steps=1))).size == (
            64,
            64,
        )
    assert not gen.ready
    with pytest.raises(NotReady):
        await gen.generate(_req())


async def test_missing_model_offline_is_one_clear_line(hf_offline: Path) -> None:
    gen = tiny_generator("someorg/missing-diffusion-model", model_cache_dir=hf_offline)
    with pytest.raises(ModelUnavailable) as info:
        await gen.start()
    await gen.stop()
    message = info.value.message
    assert "\n" not in message
    assert "'someorg/missing-diffusion-model'" in message
    assert "SAFEGEN_GENERATOR_MODEL" in message
    assert "safegen download someorg/missing-diffusion-model" in message


async def test_broken_local_model_is_unavailable(tmp_path: Path) -> None:
    (tmp_path / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline", ')
    gen = tiny_generator(tmp_path)
    with pytest.raises(ModelUnavailable) as info:
        await gen.start()
    await gen.stop()
    assert "could not be loaded" in info.value.message
    assert "SAFEGEN_GENERATOR_MODEL" in info.value.message


async def test_a_model_that_cannot_generate_fails_at_start(
    tiny_sd_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from diffusers import StableDiffusionPipeline

    def broken(self: Any, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("boom")

    monkeypatch.setattr(StableDiffusionPipeline, "__call__", broken)
    gen = tiny_generator(tiny_sd_dir)
    with pytest.raises(ModelUnavailable):
        await gen.start()
    assert not gen.ready
    await gen.stop()

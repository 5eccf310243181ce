"""Upscalers: the Lanczos resize, the model-based path and the setting that picks one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from safegen.errors import ModelUnavailable, NotReady
from safegen.generation import DiffusersUpscaler, ResizeUpscaler, Upscaler, build_upscaler
from safegen.settings import Settings


def _gradient(width: int, height: int) -> Image.Image:
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :].repeat(height, axis=0)
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None].repeat(width, axis=1)
    rgb = np.stack([x, y, 255 - x], axis=-1).astype(np.uint8)
    return Image.fromarray(rgb, "RGB")


async def test_resize_doubles_the_size_and_keeps_the_picture() -> None:
    upscaler = ResizeUpscaler()
    assert isinstance(upscaler, Upscaler)
    assert (upscaler.name, upscaler.factor) == ("lanczos2x", 2)
    await upscaler.start()
    source = _gradient(512, 1024)
    big = await upscaler.upscale(source, prompt="ignored")
    await upscaler.stop()
    assert big.size == (1024, 2048)
    assert big.mode == "RGB"
    # Shrinking it back gives the original within rounding: it is a resize, nothing invented.
    back = big.resize(source.size, Image.Resampling.LANCZOS)
    diff = np.abs(np.asarray(back, np.int16) - np.asarray(source, np.int16))
    assert diff.max() <= 3


@pytest.mark.parametrize("mode", ["RGBA", "L", "P"])
async def test_resize_returns_rgb_for_any_mode(mode: str) -> None:
    image = _gradient(40, 30).convert(mode)
    big = await ResizeUpscaler(factor=3, name="lanczos3x").upscale(image)
    assert big.size == (120, 90)
    assert big.mode == "RGB"


def test_resize_refuses_a_zero_factor() -> None:
    with pytest.raises(ValueError, match="factor"):
        ResizeUpscaler(factor=0)


@pytest.mark.parametrize(
    ("spec", "factor"), [("lanczos2x", 2), ("LANCZOS2X", 2), (" lanczos4x ", 4)]
)
def test_build_resize_upscaler(spec: str, factor: int) -> None:
    upscaler = build_upscaler(Settings(upscaler=spec, device="cpu"))
    assert isinstance(upscaler, ResizeUpscaler)
    assert upscaler.factor == factor
    assert upscaler.name == f"lanczos{factor}x"


@pytest.mark.parametrize("spec", ["none", "None", "", "  ", "off"])
def test_build_no_upscaler(spec: str) -> None:
    assert build_upscaler(Settings(upscaler=spec, device="cpu")) is None


@pytest.mark.parametrize("spec", ["stabilityai/sd-x2-latent-upscaler", "/models/my-upscaler"])
def test_build_model_upscaler(spec: str, tmp_path: Path) -> None:
    upscaler = build_upscaler(Settings(upscaler=spec, device="cpu", model_cache_dir=tmp_path))
    assert isinstance(upscaler, DiffusersUpscaler)
    assert isinstance(upscaler, Upscaler)
    assert upscaler.model == spec
    assert upscaler.cache_dir == tmp_path
    assert upscaler.pipeline is None  # nothing loads before start()


async def test_model_upscaler_missing_offline_is_one_clear_line(hf_offline: Path) -> None:
    upscaler = build_upscaler(Settings(
        upscaler="stabilityai/sd-x2-latent-upscaler", device="cpu", model_cache_dir=hf_offline
    ))
    assert upscaler is not None
    with pytest.raises(ModelUnavailable) as info:
        await upscaler.start()
    await upscaler.stop()
    message = info.value.message
    assert "\n" not in message
    assert "'stabilityai/sd-x2-latent-upscaler'" in message
    assert "SAFEGEN_UPSCALER" in message
    with pytest.raises(NotReady):
        await upscaler.upscale(_gradient(8, 8))


async def test_model_upscaler_refuses_a_text_to_image_model(tiny_sd_dir: Path) -> None:
    upscaler = DiffusersUpscaler(str(tiny_sd_dir), device="cpu", cache_dir=None,
                                 num_inference_steps=2)
    with pytest.raises(ModelUnavailable, match="could not be loaded"):
        await upscaler.start()
    await upscaler.stop()


async def test_model_upscaler_with_a_tiny_x4_pipeline(tiny_x4_upscaler_dir: Path) -> None:
    upscaler = build_upscaler(
        Settings(upscaler=str(tiny_x4_upscaler_dir), device="cpu", upscaler_steps=2)
    )
    assert isinstance(upscaler, DiffusersUpscaler)
    await upscaler.start()
    try:
        assert upscaler.factor == 4
        big = await upscaler.upscale(_gradient(48, 32), prompt="a gradient")
    finally:
        await upscaler.stop()
    assert big.size == (192, 128)
    assert big.mode == "RGB"

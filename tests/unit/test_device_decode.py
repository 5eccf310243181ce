"""JPEG decoding on the model's device (SAFEGEN_DEVICE_DECODE), with torchvision when installed.

Where torchvision is installed (the hosts where the feature matters) its real ``decode_jpeg`` runs,
only recorded on its way. Where it is not (it has no CPU build on the development machines), a
stand-in module with the same contract (a list in, a list out, nothing at all when any image fails,
EXIF orientation on request) decodes with PIL on the CPU. Everything else is real either way: the
header checks in the decode threads, batching, the resize on the device (torch's antialiased
bilinear, on the CPU here), its parity with the PIL path, per-image errors and the start-up checks.
"""

from __future__ import annotations

import enum
import importlib.machinery
import importlib.util
import io
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from safegen.errors import ImageError, ModelUnavailable
from safegen.imaging import ImageLimits, decode_for_model
from safegen.moderation.device_decode import NEEDS_TORCHVISION, DeviceDecoder, EncodedJpeg
from safegen.moderation.engine import ClassifierEngine, EngineConfig
from safegen.preflight import preflight
from safegen.settings import Settings
from tests.support import engines, images

# max |delta p| of device decoding against the exact CPU path (full decode, PIL bilinear): the
# stand-in decodes with the same libjpeg, so this measures the resize; nvjpeg's IDCT may differ
# from libjpeg's by a level or two per pixel on a GPU (unmeasured: no GPU here).
DEVICE_DECODE_BOUND = 5e-3


class FakeTorchvision:
    """``torchvision.io.decode_jpeg`` as documented, decoding with PIL; records each call."""

    class ImageReadMode(enum.Enum):
        RGB = 3

    def __init__(self) -> None:
        self.calls: list[dict[str, object]] = []

    def decode_jpeg(self, input, mode, device, apply_exif_orientation=False):  # noqa: A002
        self.calls.append({"count": len(input), "mode": mode, "device": device,
                           "exif": apply_exif_orientation})
        decoded = []
        for data in input:
            image = Image.open(io.BytesIO(data.numpy().tobytes()))
            image.load()  # raises on a truncated file, as the real decoder does
            if apply_exif_orientation:
                image = ImageOps.exif_transpose(image)
            pixels = np.asarray(image.convert("RGB"))
            decoded.append(torch.from_numpy(pixels.copy()).permute(2, 0, 1).to(device))
        return decoded

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        package = types.ModuleType("torchvision")
        package.__spec__ = importlib.machinery.ModuleSpec("torchvision", None)
        io_module = types.ModuleType("torchvision.io")
        io_module.ImageReadMode = self.ImageReadMode  # type: ignore[attr-defined]
        io_module.decode_jpeg = self.decode_jpeg  # type: ignore[attr-defined]
        package.io = io_module  # type: ignore[attr-defined]
        monkeypatch.setitem(sys.modules, "torchvision", package)
        monkeypatch.setitem(sys.modules, "torchvision.io", io_module)


class RecordedTorchvision:
    """The installed torchvision, its ``decode_jpeg`` recorded like the stand-in's."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import torchvision.io

        self.calls: list[dict[str, object]] = []
        real = torchvision.io.decode_jpeg

        def decode_jpeg(input, mode, device, apply_exif_orientation=False):  # noqa: A002
            self.calls.append({"count": len(input), "mode": mode, "device": torch.device(device),
                               "exif": apply_exif_orientation})
            return real(input, mode=mode, device=device,
                        apply_exif_orientation=apply_exif_orientation)

        # DeviceDecoder imports decode_jpeg from torchvision.io when it is built, after this.
        monkeypatch.setattr(torchvision.io, "decode_jpeg", decode_jpeg)


@pytest.fixture
def torchvision_decoder(monkeypatch: pytest.MonkeyPatch) -> FakeTorchvision | RecordedTorchvision:
    """The real torchvision where installed, else the stand-in; either records its calls."""
    if importlib.util.find_spec("torchvision") is not None:
        return RecordedTorchvision(monkeypatch)
    from transformers.utils import is_torchvision_available

    # transformers caches this on first use: asked now (False), it never loads image processors
    # through the stand-in, which has only ``decode_jpeg``
    assert not is_torchvision_available()
    fake = FakeTorchvision()
    fake.install(monkeypatch)
    return fake


def engine_config(model_dir: Path, *, device_decode: bool, backend: str = "torch") -> EngineConfig:
    return engines.engine_config(model_dir, device="cpu", backend=backend, precision="fp32",
                                 fast_decode=False, device_decode=device_decode,
                                 auto_batch_size=False)


def rotated_jpeg() -> bytes:
    """A portrait photo stored landscape, with EXIF orientation 6 (rotate 90 degrees)."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return images.encode(images.photo_like(5, (400, 240)), exif=exif.tobytes())


def test_device_resize_matches_pil_bilinear(torchvision_decoder):
    decoder = DeviceDecoder(torch.device("cpu"), (224, 224))
    limits = ImageLimits.from_settings(Settings())
    for data in [images.jpeg(1), images.jpeg(2, (300, 200)), images.jpeg(3, (1000, 1000))]:
        (pixels,) = decoder.decode([EncodedJpeg(data)])
        expected = decode_for_model(data, limits, (224, 224), fast=False)
        difference = np.abs(pixels.numpy().astype(int) - expected.astype(int))
        assert pixels.shape == (224, 224, 3)
        assert pixels.dtype == torch.uint8
        # PIL resizes in fixed point, torch in float: a pixel may round one level apart
        assert difference.max() <= 1, difference.max()
        assert difference.mean() < 0.2, difference.mean()


async def test_scores_within_bound_of_cpu_path_and_batched(torchvision_decoder, tiny_vit_dir):
    batch = [images.jpeg(seed) for seed in range(4)] + [images.png(9, (640, 480)), rotated_jpeg()]
    async with ClassifierEngine(engine_config(tiny_vit_dir, device_decode=False)) as engine:
        expected = await engine.classify_bytes(batch)
    async with ClassifierEngine(engine_config(tiny_vit_dir, device_decode=True)) as engine:
        torchvision_decoder.calls.clear()  # drop the warm-up
        found = await engine.classify_bytes(batch)
    drift = max(abs(a.nsfw_score - b.nsfw_score) for a, b in zip(found, expected, strict=True))
    assert drift <= DEVICE_DECODE_BOUND, drift
    decoded = sum(call["count"] for call in torchvision_decoder.calls)
    assert decoded == 5  # the JPEGs (rotated one included); the PNG took the CPU path
    assert all(call["exif"] and call["device"] == torch.device("cpu")
               for call in torchvision_decoder.calls)
    assert any(call["count"] > 1 for call in torchvision_decoder.calls)  # batches, not one by one


async def test_an_undecodable_jpeg_fails_alone(torchvision_decoder, tiny_vit_dir):
    batch = [images.jpeg(1), images.truncated_jpeg(2), images.jpeg(3)]
    async with ClassifierEngine(engine_config(tiny_vit_dir, device_decode=True)) as engine:
        results = await engine.classify_bytes(batch)
        again = await engine.classify_bytes([images.jpeg(4)])
    assert isinstance(results[1], ImageError), results[1]
    assert results[1].message == "the image data is truncated or corrupt"
    assert [isinstance(r, ImageError) for r in [*results, *again]] == [False, True, False, False]


async def test_needs_the_torch_backend(torchvision_decoder, tiny_vit_dir, tmp_path):
    config = engine_config(tiny_vit_dir, device_decode=True, backend="onnx")
    config = EngineConfig(**{**config.__dict__, "cache_dir": tmp_path})
    with pytest.raises(ModelUnavailable) as refused:
        async with ClassifierEngine(config):
            pass
    assert refused.value.message == (
        "SAFEGEN_DEVICE_DECODE=true needs the torch backend (SAFEGEN_BACKEND=torch)")


async def test_auto_chooses_among_torch_paths_only(torchvision_decoder, tiny_vit_dir, tmp_path):
    """With device decoding on, ``auto`` must not measure its way to onnxruntime or OpenVINO."""
    config = engine_config(tiny_vit_dir, device_decode=True, backend="auto")
    config = EngineConfig(**{**config.__dict__, "cache_dir": tmp_path, "precision": "auto"})
    async with ClassifierEngine(config) as engine:
        assert engine.backend.name == "torch"


def test_without_torchvision_start_fails_with_one_line(tiny_vit_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "torchvision", None)  # as if not installed
    settings = Settings(nsfw_model=str(tiny_vit_dir), device_decode=True, no_auth=True)
    with pytest.raises(ModelUnavailable) as raised:
        preflight(settings)
    assert raised.value.message == NEEDS_TORCHVISION

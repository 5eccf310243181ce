"""Upscaling a generated image before delivery.

Two kinds, chosen by one setting (see ``build_upscaler``):

- ``ResizeUpscaler``: a Lanczos resize. It is fast (tens of ms) and honest about what it is: it
  makes the image bigger and smooth, it adds no detail. The default, ``lanczos2x``.
- ``DiffusersUpscaler``: a diffusion upscaler (``stabilityai/sd-x2-latent-upscaler``,
  ``stabilityai/stable-diffusion-x4-upscaler`` or a local copy) that does invent detail, at the cost
  of a second diffusion run; used only when configured.
"""

from __future__ import annotations

import asyncio
import logging
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from PIL import Image

from safegen.devices import resolve_device
from safegen.errors import GenerationFailed, ModelUnavailable, NotReady
from safegen.hub import load_failed_message, model_unavailable, resolve_model
from safegen.settings import Settings

logger = logging.getLogger("safegen.generation")

_KIND = "upscaler"
_ENV_VAR = "SAFEGEN_UPSCALER"
# The diffusers pipeline classes that upscale, and by how much.
_FACTORS = {"StableDiffusionLatentUpscalePipeline": 2, "StableDiffusionUpscalePipeline": 4}


@runtime_checkable
class Upscaler(Protocol):
    """Makes an image ``factor`` times wider and taller. ``prompt`` guides model-based upscalers."""

    name: str
    factor: int

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def upscale(self, image: Image.Image, *, prompt: str = "") -> Image.Image: ...


class ResizeUpscaler:
    """A high-quality Lanczos resize by an integer factor, run off the event loop."""

    def __init__(self, factor: int = 2, name: str = "lanczos2x") -> None:
        if factor < 1:
            raise ValueError("factor must be at least 1")
        self.factor = factor
        self.name = name

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def upscale(self, image: Image.Image, *, prompt: str = "") -> Image.Image:
        return await asyncio.to_thread(self._resize, image)

    def _resize(self, image: Image.Image) -> Image.Image:
        size = (image.width * self.factor, image.height * self.factor)
        return image.convert("RGB").resize(size, Image.Resampling.LANCZOS)


class DiffusersUpscaler:
    """A diffusion-model upscaler (2x latent or 4x), loaded from a hub id or a local directory.

    Like the generator it owns one worker thread: a pipeline is not safe to share between threads.
    """

    def __init__(
        self,
        model: str,
        *,
        device: str,
        cache_dir: Path | None,
        num_inference_steps: int,
    ) -> None:
        """Values come from ``Settings`` (:func:`build_upscaler`); none are defaulted here."""
        self.model = model
        self.name = model.rstrip("/").rsplit("/", 1)[-1]
        self.factor = 2  # the real value is known once the pipeline is loaded
        self.requested_device = device
        self.device = "cpu"
        self.cache_dir = cache_dir
        self.num_inference_steps = num_inference_steps
        self.pipeline: Any = None
        self._executor: ThreadPoolExecutor | None = None

    async def start(self) -> None:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="safegen-upscale")
        await asyncio.get_running_loop().run_in_executor(self._executor, self._load)

    async def stop(self) -> None:
        executor, self._executor = self._executor, None
        if executor is not None:
            await asyncio.to_thread(executor.shutdown, wait=True)
        self.pipeline = None

    async def upscale(self, image: Image.Image, *, prompt: str = "") -> Image.Image:
        pipeline, executor = self.pipeline, self._executor
        if pipeline is None or executor is None:
            raise NotReady("the upscaler is not loaded")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(executor, self._upscale, pipeline, image, prompt)

    def _load(self) -> None:
        import torch
        from diffusers import DiffusionPipeline

        source = resolve_model(
            self.model, kind=_KIND, env_var=_ENV_VAR, cache_dir=self.cache_dir
        )
        self.device = resolve_device(self.requested_device)
        dtype = torch.float16 if self.device.startswith("cuda") else torch.float32
        try:
            pipeline = DiffusionPipeline.from_pretrained(
                source, dtype=dtype, cache_dir=self.cache_dir
            )
            pipeline.to(self.device)
        except Exception as exc:
            raise model_unavailable(self.model, kind=_KIND, env_var=_ENV_VAR, exc=exc) from exc
        factor = _FACTORS.get(type(pipeline).__name__)
        if factor is None:
            logger.error("%r is a %s, not an upscaler", self.model, type(pipeline).__name__)
            raise ModelUnavailable(load_failed_message(self.model, _KIND, _ENV_VAR))
        pipeline.set_progress_bar_config(disable=True)
        self.pipeline, self.factor = pipeline, factor

    def _upscale(self, pipeline: Any, image: Image.Image, prompt: str) -> Image.Image:
        import torch

        kwargs: dict[str, Any] = {
            "prompt": prompt,
            "image": image.convert("RGB"),
            "num_inference_steps": self.num_inference_steps,
            "output_type": "pil",
        }
        if self.factor == 2:
            kwargs["guidance_scale"] = 0  # the latent upscaler is trained to run unguided
        try:
            with torch.inference_mode():
                out = pipeline(**kwargs).images[0]
        except Exception:
            logger.exception("upscaling %dx%d failed", image.width, image.height)
            raise GenerationFailed("upscaling the image failed") from None
        size = (image.width * self.factor, image.height * self.factor)
        if out.size != size:  # the pipelines round to their latent grid
            out = out.resize(size, Image.Resampling.LANCZOS)
        return out.convert("RGB")


_LANCZOS = re.compile(r"lanczos([2-8])x")


def build_upscaler(settings: Settings) -> Upscaler | None:
    """Build the upscaler ``SAFEGEN_UPSCALER`` names; nothing is loaded until ``start()``.

    ``"none"`` (or empty): no upscaling. ``"lanczos2x"`` (the default; also ``lanczos3x`` ...
    ``lanczos8x``): a resize. Anything else: a hub id or local directory of a diffusion upscaler.
    """
    key = settings.upscaler.strip()
    if key.lower() in {"", "none", "off"}:
        return None
    match = _LANCZOS.fullmatch(key.lower())
    if match:
        return ResizeUpscaler(factor=int(match.group(1)), name=key.lower())
    return DiffusersUpscaler(key, device=settings.device, cache_dir=settings.model_cache_dir,
                             num_inference_steps=settings.upscaler_steps)

"""Text-to-image generation with a diffusers pipeline, loaded from a hub id or a local directory.

A diffusers pipeline is not safe to call from two threads at once (the scheduler keeps per-call
state such as its timesteps), and a call takes seconds of CPU/GPU work that must not run on the
event loop. So each generator owns ONE worker thread: loading, warm-up and every generation run
there, one after another, while the event loop only awaits their futures.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from PIL import Image

from safegen.devices import resolve_device
from safegen.errors import GenerationFailed, InvalidInput, ModelUnavailable, NotReady, Overloaded
from safegen.generation.base import GenerationRequest
from safegen.hub import load_failed_message, model_unavailable, resolve_model
from safegen.settings import Settings

logger = logging.getLogger("safegen.generation")

GENERATOR_KIND = "image generator"
GENERATOR_ENV_VAR = "SAFEGEN_GENERATOR_MODEL"
_FAILED = "image generation failed"


def build_generator(settings: Settings) -> DiffusersGenerator | None:
    """The generator the settings ask for, or ``None`` when generation is off."""
    if settings.generator_model.strip().lower() in ("", "none"):
        return None
    return DiffusersGenerator(
        settings.generator_model, device=settings.device, cache_dir=settings.model_cache_dir,
        warmup_steps=settings.generator_warmup_steps, max_pending=settings.generator_max_pending,
    )


class DiffusersGenerator:
    """A ``Generator`` backed by any diffusers text-to-image pipeline (via ``AutoPipeline``).

    fp16 on CUDA, fp32 on CPU. ``seed`` makes a request reproducible (same pixels on the same
    machine and library versions). Concurrent ``generate`` calls are queued on the worker thread;
    at most ``max_pending`` (running one included), beyond which ``Overloaded`` is raised at once
    instead of letting the queue, and every caller's wait, grow without bound.
    """

    def __init__(
        self,
        model: str,
        *,
        device: str,
        cache_dir: Path | None,
        warmup_steps: int,
        max_pending: int,
    ) -> None:
        """Values come from ``Settings`` (:func:`build_generator`); none are defaulted here."""
        self.model = model
        self.name = model.rstrip("/").rsplit("/", 1)[-1]
        self.requested_device = device
        self.device = "cpu"
        self.cache_dir = cache_dir
        self.warmup_steps = warmup_steps
        self.max_pending = max_pending
        self.pipeline: Any = None
        self._executor: ThreadPoolExecutor | None = None
        self._pending = 0
        self._pending_lock = threading.Lock()  # released from the worker thread's done callback
        self._last_duration_s = 1.0

    async def __aenter__(self) -> DiffusersGenerator:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    @property
    def ready(self) -> bool:
        return self.pipeline is not None

    @property
    def pending(self) -> int:
        """Generations queued or running now."""
        return self._pending

    @property
    def size_multiple(self) -> int:
        """Width and height must be multiples of this (the VAE's downsampling factor)."""
        return int(getattr(self.pipeline, "vae_scale_factor", 8) or 8)

    async def start(self) -> None:
        """Load the pipeline and run one tiny generation, both on the worker thread."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="safegen-generate"
            )
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._load)
        if self.warmup_steps > 0:
            side = 8 * self.size_multiple  # 64x64 for Stable Diffusion: cheap, but runs every stage
            warm = GenerationRequest("warm-up", None, side, side, self.warmup_steps, seed=0)
            started = time.perf_counter()
            try:
                await loop.run_in_executor(self._executor, self._generate, self.pipeline, warm)
            except GenerationFailed:
                # A model that loads but cannot generate is not usable: fail start-up, not requests.
                self.pipeline = None
                raise ModelUnavailable(
                    load_failed_message(self.model, GENERATOR_KIND, GENERATOR_ENV_VAR)
                ) from None
            logger.info("generator warmed up in %.2f s", time.perf_counter() - started)

    async def stop(self) -> None:
        """Let queued generations finish, then release the pipeline and its memory."""
        executor, self._executor = self._executor, None
        if executor is not None:
            await asyncio.to_thread(executor.shutdown, wait=True)
        self.pipeline = None
        gc.collect()
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.empty_cache()

    async def generate(self, req: GenerationRequest) -> Image.Image:
        """Generate one RGB image of ``req.width`` x ``req.height``."""
        pipeline, executor = self.pipeline, self._executor
        if pipeline is None or executor is None:
            raise NotReady("the image generator is not loaded")
        self._validate(req)
        with self._pending_lock:
            if self._pending >= self.max_pending:
                wait_s = self._last_duration_s * self._pending
                raise Overloaded(
                    f"the image generator is busy ({self._pending} requests queued)",
                    retry_after_s=max(1, round(wait_s)),
                )
            self._pending += 1
        try:
            future = executor.submit(self._generate, pipeline, req)
        except RuntimeError:  # the executor was shut down between the check and the submit
            self._release()
            raise NotReady("the image generator is shutting down") from None
        # Runs when the work ends, or at once if a caller that gave up cancels it while queued.
        future.add_done_callback(self._release)
        return await asyncio.wrap_future(future)

    def _release(self, _future: object = None) -> None:
        with self._pending_lock:
            self._pending -= 1

    # -- worker-thread side -----------------------------------------------------------------------

    def _load(self) -> None:
        import torch
        from diffusers import AutoPipelineForText2Image, DiffusionPipeline

        source = resolve_model(
            self.model, kind=GENERATOR_KIND, env_var=GENERATOR_ENV_VAR, cache_dir=self.cache_dir
        )
        self.device = resolve_device(self.requested_device)
        dtype = torch.float16 if self.device.startswith("cuda") else torch.float32
        kwargs: dict[str, Any] = {"dtype": dtype, "cache_dir": self.cache_dir}
        started = time.perf_counter()
        try:
            config = DiffusionPipeline.load_config(source, cache_dir=self.cache_dir)
            # The pipeline's own safety checker would replace flagged images with black ones. The
            # service must deliver every image and score it with its own NSFW classifier, so the
            # checker is not loaded at all (it would also cost about 1 GB of memory and time).
            if "safety_checker" in config:
                kwargs["safety_checker"] = None
            if "requires_safety_checker" in config:
                kwargs["requires_safety_checker"] = False
            pipeline = AutoPipelineForText2Image.from_pretrained(source, **kwargs)
            pipeline.to(self.device)
        except Exception as exc:
            raise model_unavailable(
                self.model, kind=GENERATOR_KIND, env_var=GENERATOR_ENV_VAR, exc=exc
            ) from exc
        pipeline.set_progress_bar_config(disable=True)
        self.pipeline = pipeline
        logger.info(
            "generator %s (%s) loaded on %s/%s in %.2f s",
            self.name,
            type(pipeline).__name__,
            self.device,
            dtype,
            time.perf_counter() - started,
        )

    def _generate(self, pipeline: Any, req: GenerationRequest) -> Image.Image:
        import torch

        kwargs: dict[str, Any] = {
            "prompt": req.prompt,
            "negative_prompt": req.negative_prompt,
            "width": req.width,
            "height": req.height,
            "num_inference_steps": req.num_inference_steps,
            "output_type": "pil",
        }
        if req.seed is not None:
            kwargs["generator"] = torch.Generator(self.device).manual_seed(req.seed)
        if req.guidance_scale is not None:
            kwargs["guidance_scale"] = req.guidance_scale
        started = time.perf_counter()
        try:
            with torch.inference_mode():
                image = pipeline(**kwargs).images[0]
        except Exception:
            # Library text may quote internals or the prompt: log it, answer a fixed message.
            logger.exception(
                "generation failed (%dx%d, %d steps)",
                req.width,
                req.height,
                req.num_inference_steps,
            )
            raise GenerationFailed(_FAILED) from None
        self._last_duration_s = time.perf_counter() - started
        if image.size != (req.width, req.height):
            # Some pipelines round sizes to their own multiple; the contract is the requested size.
            image = image.resize((req.width, req.height), Image.Resampling.LANCZOS)
        return image if image.mode == "RGB" else image.convert("RGB")

    def _validate(self, req: GenerationRequest) -> None:
        multiple = self.size_multiple
        for field in ("width", "height"):
            value = getattr(req, field)
            if value < multiple or value % multiple:
                raise InvalidInput(
                    f"{field} must be a positive multiple of {multiple}, got {value}", field=field
                )
        if req.num_inference_steps < 1:
            raise InvalidInput(
                "num_inference_steps must be at least 1", field="num_inference_steps"
            )
        if req.seed is not None and not 0 <= req.seed < 2**63:
            raise InvalidInput("seed must be between 0 and 2**63 - 1", field="seed")

"""The classifier engine: decode threads feeding one batched model thread.

Decoding and resizing of request N+1 run in a thread pool while the model thread works on batch N,
so with spare cores the model does not wait for images. Usable without the web layer
(``async with ClassifierEngine(...) as engine``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from safegen.errors import ImageError, ModelUnavailable, NotReady, Overloaded, SafegenError
from safegen.imaging import (
    DecodeBudget,
    ImageLimits,
    encode_jpeg,
    open_checked,
    pixels_for_model,
    resize_rgb,
)
from safegen.metrics import Metrics
from safegen.moderation import path_choice
from safegen.moderation.backends.torch_backend import TorchBackend
from safegen.moderation.base import Backend, Classifier, Score
from safegen.moderation.batcher import Batcher
from safegen.moderation.device_decode import (
    DEVICE_DECODE_MODES,
    DeviceDecoder,
    EncodedJpeg,
    predict_decoding_on_device,
)
from safegen.moderation.frames import (
    FrameLimits,
    check_animation,
    decode_frames,
    is_animated,
    sample_indices,
)
from safegen.moderation.loading import LoadedClassifier, load_classifier
from safegen.moderation.result_cache import ResultCache, digest
from safegen.settings import Settings

__all__ = ["Classifier", "ClassifierEngine", "EngineConfig", "Score"]  # contract re-exported

# What the decode threads hand the batcher: decoded pixels, or a JPEG for the device to decode.
Pixels = np.ndarray | EncodedJpeg


@dataclass(frozen=True)
class Frames:
    """The sampled frames of an animation: each goes to the batcher like a still image."""

    indices: list[int]  # positions in the animation
    pixels: list[np.ndarray]

logger = logging.getLogger("safegen.moderation")


def available_cpus() -> int:
    """CPU cores this process may run on (its affinity mask, which containers narrow)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


class ModelTimePerImage:
    """Seconds of model time per image, weighted toward recent forward passes."""

    WEIGHT = 0.2  # of the newest batch: follows a change of load within a few batches

    def __init__(self) -> None:
        self.seconds: float | None = None

    def observe(self, images: int, seconds: float) -> None:
        sample = seconds / images
        previous = self.seconds
        self.seconds = sample if previous is None else previous + self.WEIGHT * (sample - previous)


@dataclass(frozen=True)
class EngineConfig:
    """What the engine runs with; no defaults here: :meth:`from_settings` gives ``Settings``'."""

    model: str
    cache_dir: Path | None
    device: str
    backend: str
    precision: str
    fast_decode: bool
    max_batch_size: int
    max_batch_wait_s: float
    max_queue_images: int
    max_queue_wait_s: float
    decode_threads: int  # 0: one per CPU core available to the process
    torch_threads: int
    inference_timeout_s: float
    device_decode: bool  # JPEGs decoded on the model's device (torchvision)
    auto_max_drift: float
    auto_batch_size: bool
    limits: ImageLimits
    decode_memory_bytes: int  # decoded pixels held at once by all decode threads
    frames: FrameLimits
    result_cache_size: int

    @classmethod
    def from_settings(cls, settings: Settings) -> EngineConfig:
        return cls(
            model=settings.nsfw_model,
            cache_dir=settings.model_cache_dir,
            device=settings.device,
            backend=settings.backend,
            precision=settings.precision,
            fast_decode=settings.fast_decode,
            max_batch_size=settings.max_batch_size,
            max_batch_wait_s=settings.max_batch_wait_ms / 1000,
            max_queue_images=settings.max_queue_images,
            max_queue_wait_s=settings.max_queue_wait_s,
            decode_threads=settings.decode_threads,
            torch_threads=settings.torch_threads,
            inference_timeout_s=settings.inference_timeout_s,
            device_decode=settings.device_decode,
            auto_max_drift=settings.auto_max_drift,
            auto_batch_size=settings.auto_batch_size,
            limits=ImageLimits.from_settings(settings),
            decode_memory_bytes=settings.decode_memory_mb * 2**20,
            frames=FrameLimits(
                max_frames=settings.max_frames,
                max_animation_frames=settings.max_animation_frames,
                max_animation_pixels=settings.max_animation_pixels,
            ),
            result_cache_size=settings.result_cache_size,
        )


class ClassifierEngine:
    """Loads the model once, warms it, and scores images through a dynamic batcher."""

    def __init__(self, config: EngineConfig, metrics: Metrics | None = None) -> None:
        self.config = config
        self.metrics = metrics or Metrics()
        self.model_name = config.model
        self.labels: list[str] = []
        self._loaded: LoadedClassifier | None = None
        self._backend: Backend | None = None
        self._decoding = 0  # images admitted and being decoded; the batcher waits for them
        # Decoding releases the GIL; one thread per core lets a GPU host decode as fast as its
        # model runs (2 threads would cap a 16-core host at about 600 images/s).
        self.decode_threads = config.decode_threads or available_cpus()
        self._decode_pool = ThreadPoolExecutor(self.decode_threads, "safegen-decode")
        self._decode_budget = DecodeBudget(config.decode_memory_bytes)
        self._model_thread = ThreadPoolExecutor(1, "safegen-model")
        self._device_decoder: DeviceDecoder | None = None
        self._model_time = ModelTimePerImage()  # for admission by expected wait
        self._batcher: Batcher[Pixels, np.ndarray] | None = None
        self.max_batch_size = config.max_batch_size  # lowered by the start-up measurement
        self.choice: path_choice.Choice | None = None
        self._cache = ResultCache(config.result_cache_size)
        self._ready = False

    @property
    def ready(self) -> bool:
        return self._ready and not (self._batcher is not None and self._batcher.stalled)

    @property
    def backend(self) -> Backend:
        if self._backend is None:
            raise NotReady("the classifier is not loaded")
        return self._backend

    async def __aenter__(self) -> ClassifierEngine:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        self._backend = await loop.run_in_executor(self._model_thread, self._load)
        self._batcher = Batcher(
            self._predict,
            self._model_thread,
            max_batch_size=self.max_batch_size,
            max_wait_s=self.config.max_batch_wait_s,
            max_queue=self.config.max_queue_images,
            arriving=lambda: self._decoding,
            stall_timeout_s=self.config.inference_timeout_s,
            on_batch=self._record_batch,
            on_depth=self.metrics.queue_depth.set,
        )
        await self._batcher.start()
        await loop.run_in_executor(self._model_thread, self._warm_up)
        self._ready = True
        logger.info(
            "classifier ready: model=%s backend=%s precision=%s device=%s in %.1fs",
            self.model_name, self._backend.name, self._backend.precision,
            getattr(self._backend, "device", "?"), time.monotonic() - started,
        )

    async def stop(self, grace_s: float = 0.0) -> None:
        self._ready = False
        if self._batcher is not None:
            await self._batcher.stop(grace_s)
        self._decode_pool.shutdown(wait=False, cancel_futures=True)
        self._model_thread.shutdown(wait=True)

    def _load(self) -> Backend:
        cfg = self.config
        if cfg.torch_threads:
            import torch

            torch.set_num_threads(cfg.torch_threads)
        self._loaded = load_classifier(cfg.model, cfg.cache_dir)
        self.labels = self._loaded.labels
        # Device decoding hands torch tensors to the torch backend: auto chooses among its paths.
        backend_name = "torch" if cfg.device_decode and cfg.backend == "auto" else cfg.backend
        request = path_choice.PathRequest(
            backend=backend_name, precision=cfg.precision, device=cfg.device,
            cache_dir=cfg.cache_dir, max_drift=cfg.auto_max_drift,
            max_batch_size=cfg.max_batch_size, tune_batch_size=cfg.auto_batch_size,
        )
        backend, self.choice = path_choice.choose(self._loaded, request)
        self.max_batch_size = self.choice.batch_size
        if cfg.device_decode:
            if not isinstance(backend, TorchBackend):
                raise ModelUnavailable(
                    "SAFEGEN_DEVICE_DECODE=true needs the torch backend (SAFEGEN_BACKEND=torch)"
                )
            self._device_decoder = DeviceDecoder(backend.device, self.size)
        return backend

    def _warm_up(self) -> None:
        """Run the sizes we will serve once, so the first real request pays no one-off costs."""
        width, height = self.size
        for n in sorted({1, self.max_batch_size}):
            started = time.monotonic()
            self._predict([np.zeros((height, width, 3), np.uint8)] * n)
        self._model_time.observe(n, time.monotonic() - started)  # the first estimate: full batch
        if self._device_decoder is not None:  # creates the decoder's handles (nvjpeg) now
            self._predict([EncodedJpeg(encode_jpeg(Image.new("RGB", (64, 64)), 90))])

    @property
    def size(self) -> tuple[int, int]:
        assert self._loaded is not None
        return self._loaded.preprocessing.size

    def _predict(self, items: list[Pixels]) -> Sequence[np.ndarray | ImageError]:
        if self._device_decoder is not None and any(isinstance(i, EncodedJpeg) for i in items):
            assert isinstance(self.backend, TorchBackend)
            return predict_decoding_on_device(self.backend, self._device_decoder, items)
        return list(self.backend.predict(np.stack(items)))  # type: ignore[arg-type]

    def _record_batch(self, size: int, seconds: float) -> None:
        self.metrics.batch_size.observe(size)
        self.metrics.inference_latency.observe(seconds)
        self._model_time.observe(size, seconds)

    def _score(self, probs: np.ndarray) -> Score:
        assert self._loaded is not None
        scores = {label: float(p) for label, p in zip(self.labels, probs, strict=True)}
        return Score(
            label=self.labels[int(np.argmax(probs))],
            nsfw_score=float(probs[self._loaded.nsfw_index]),
            scores=scores,
        )

    async def classify_bytes(self, items: list[bytes]) -> list[Score | SafegenError]:
        """Score encoded images. A bad image yields its error in its place; the rest are scored.

        Each image goes to the batcher as soon as it is decoded, so a large request's decoding
        overlaps the forward passes of its first images.
        """
        batcher = self._require_batcher()
        self._admit(batcher, len(items))
        self._decoding += len(items)
        results = await asyncio.gather(*(self._classify_one(batcher, data) for data in items))
        for result in results:
            outcome = "scored" if isinstance(result, Score) else result.code
            self.metrics.images.labels(outcome=outcome).inc()
        return list(results)

    def _admit(self, batcher: Batcher[Pixels, np.ndarray], count: int) -> None:
        """Refuse at once, before any work, what the queue cannot take or serve in time."""
        ahead = batcher.depth + self._decoding
        per_image = self._model_time.seconds or 0.0
        if ahead + count > batcher.max_queue:
            raise Overloaded(
                f"the classifier queue is full ({batcher.max_queue} images, "
                "SAFEGEN_MAX_QUEUE_IMAGES); retry shortly",
                retry_after_s=max(1, math.ceil(ahead * per_image)),
            )
        wait_s = ahead * per_image  # model time of the images queued ahead of this request
        limit_s = self.config.max_queue_wait_s
        if wait_s > limit_s:
            raise Overloaded(
                f"the classifier is busy: about {wait_s:.0f} s of queued work, more than "
                f"{limit_s:g} s (SAFEGEN_MAX_QUEUE_WAIT_S); retry shortly",
                retry_after_s=max(1, math.ceil(wait_s - limit_s)),
            )

    async def _classify_one(
        self, batcher: Batcher[Pixels, np.ndarray], data: bytes
    ) -> Score | SafegenError:
        loop = asyncio.get_running_loop()
        try:
            try:
                key, pixels = await loop.run_in_executor(self._decode_pool, self._lookup, data)
            finally:
                self._decoding -= 1
            if isinstance(pixels, Score):
                return pixels  # the same bytes were scored before
            if isinstance(pixels, Frames):
                frame_probs = await asyncio.gather(*(batcher.submit(p) for p in pixels.pixels))
                score = self._worst_frame(pixels.indices, frame_probs)
            else:
                score = self._score(await batcher.submit(pixels))
        except SafegenError as exc:
            return exc
        if key is not None:
            self._cache.put(self._cache_scope, key, score)
        return score

    @property
    def _cache_scope(self) -> tuple[object, ...]:
        """What besides the bytes decides a score: a cached one is valid only for the same."""
        backend = self.backend
        return (self.model_name, backend.name, backend.precision, self.size,
                self.config.fast_decode, self._device_decoder is not None,
                self.config.frames.max_frames)

    def _lookup(self, data: bytes) -> tuple[bytes | None, Score | Pixels | Frames]:
        """(cache key, the cached score or the decoded pixels); in a decode thread."""
        if not self._cache.enabled:
            return None, self._decode(data)
        key = digest(data)
        cached = self._cache.get(self._cache_scope, key)
        self.metrics.result_cache.labels(result="miss" if cached is None else "hit").inc()
        return key, cached if cached is not None else self._decode(data)

    def _worst_frame(self, indices: list[int], frame_probs: Sequence[np.ndarray]) -> Score:
        """An animation is as unsafe as its worst frame: its label and scores are that frame's."""
        scores = [self._score(probs) for probs in frame_probs]
        worst = max(range(len(scores)), key=lambda i: scores[i].nsfw_score)
        return dataclasses.replace(
            scores[worst], frames_scored=len(scores), worst_frame=indices[worst]
        )

    async def classify_image(self, image: Image.Image) -> Score:
        """Score an in-memory image (used right after generation: no encode/decode round trip).

        Admitted like uploaded images, and counted as arriving while it is resized, so the
        batcher holds a batch open for it rather than closing the one it was about to join.
        """
        batcher = self._require_batcher()
        self._admit(batcher, 1)
        self._decoding += 1
        loop = asyncio.get_running_loop()
        try:
            pixels = await loop.run_in_executor(self._decode_pool, resize_rgb, image, self.size)
        finally:
            self._decoding -= 1
        probs = await batcher.submit(pixels)
        self.metrics.images.labels(outcome="scored").inc()
        return self._score(probs)

    def _decode(self, data: bytes) -> Pixels | Frames:
        image = open_checked(data, self.config.limits)
        if is_animated(image):
            count = check_animation(image, self.config.frames)
            indices = sample_indices(count, self.config.frames.max_frames)
            return Frames(indices, decode_frames(image, indices, self.size, self._decode_budget))
        device_jpeg = image.format == "JPEG" and image.mode in DEVICE_DECODE_MODES
        if self._device_decoder is not None and device_jpeg:
            return EncodedJpeg(data)  # header and limits checked; pixels decoded with the batch
        return pixels_for_model(
            image, self.size, fast=self.config.fast_decode, budget=self._decode_budget
        )

    def _require_batcher(self) -> Batcher[Pixels, np.ndarray]:
        if self._batcher is None or not self._ready:
            raise NotReady("the classifier is not ready")
        return self._batcher

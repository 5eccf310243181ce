"""The app factory: ``create_app(settings)`` builds the FastAPI app and its lifespan.

The lifespan builds the engines, loads and warms them, flips readiness, and on shutdown flips it
back, lets in-flight work finish within the grace period and stops the engines in order.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

from fastapi import FastAPI

from safegen import __version__
from safegen.api import classify, console, generate, generations, health, info, moderations
from safegen.api.auth import announce_generated_key, resolve_auth
from safegen.api.body_limit import BodySizeLimitMiddleware
from safegen.api.errors import install_error_handlers
from safegen.api.observability import ObservabilityMiddleware
from safegen.api.ratelimit import RateLimiter
from safegen.delivery import UploadConfig, Uploader
from safegen.egress import SystemResolver
from safegen.errors import ModelUnavailable
from safegen.fetching import FetchConfig, ImageFetcher
from safegen.generation.base import Generator
from safegen.generation.diffusers_backend import build_generator
from safegen.generation.upscale import build_upscaler
from safegen.imaging import ImageLimits
from safegen.jobs.setup import start_jobs
from safegen.metrics import Metrics
from safegen.moderation.engine import Classifier, ClassifierEngine, EngineConfig
from safegen.moderation.frames import FrameLimits
from safegen.services.generate import GenerateConfig, GenerateService
from safegen.settings import Settings

logger = logging.getLogger("safegen.app")


def engine_config(settings: Settings) -> EngineConfig:
    return EngineConfig(
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
        device_decode=settings.device_decode,
        auto_max_drift=settings.auto_max_drift,
        auto_batch_size=settings.auto_batch_size,
        inference_timeout_s=settings.inference_timeout_s,
        decode_memory_bytes=settings.decode_memory_mb * 2**20,
        result_cache_size=settings.result_cache_size,
        frames=FrameLimits(
            max_frames=settings.max_frames,
            max_animation_frames=settings.max_animation_frames,
            max_animation_pixels=settings.max_animation_pixels,
        ),
        limits=ImageLimits(
            max_bytes=settings.max_image_bytes,
            max_pixels=settings.max_image_pixels,
            formats=tuple(settings.allowed_formats),
        ),
    )


def preflight(settings: Settings) -> None:
    """Fail fast, before the server starts, when a configured model cannot be had.

    A local directory must exist; a hub id must be in the cache or fetched now (so a missing
    model is one clear line here, not a traceback from the lifespan). Loading happens later.
    """
    from safegen.moderation.device_decode import NEEDS_TORCHVISION, torchvision_decoder_available
    from safegen.moderation.loading import NSFW_ENV_VAR

    if settings.device_decode and not torchvision_decoder_available():
        raise ModelUnavailable(NEEDS_TORCHVISION)
    models = [(settings.nsfw_model, "NSFW classifier", NSFW_ENV_VAR)]
    if build_generator(settings) is not None:
        models.append((settings.generator_model, "image generator", "SAFEGEN_GENERATOR_MODEL"))
    for model, kind, env_var in models:
        _ensure_available(model, kind, env_var, settings.model_cache_dir)


def _ensure_available(model: str, kind: str, env_var: str, cache_dir: Path | None) -> None:
    from safegen.hub import download, is_local, missing_weights_message, resolve_model

    source = resolve_model(model, kind=kind, env_var=env_var, cache_dir=cache_dir)
    if is_local(source):
        return
    try:
        download(source, cache_dir)  # a cache hit when present; works offline from the cache
    except ModelUnavailable:
        raise ModelUnavailable(missing_weights_message(model, kind, env_var)) from None


def create_app(
    settings: Settings | None = None,
    *,
    classifier: Classifier | None = None,
    generator: Generator | None = None,
) -> FastAPI:
    """Build the app.

    ``classifier`` and ``generator`` replace the in-process engines (remote handles, fakes); the
    caller then owns their life cycle. Otherwise they are built from ``settings``, started in the
    lifespan and stopped in reverse order after in-flight jobs have drained.
    """
    settings = settings or Settings()
    metrics = Metrics()
    auth, generated_key = resolve_auth(settings.api_keys, settings.api_keys_file, settings.no_auth)
    if generated_key is not None:
        announce_generated_key(generated_key)
    rate_limiter = RateLimiter.from_settings(settings, metrics)
    engine: Classifier = classifier or ClassifierEngine(engine_config(settings), metrics)
    image_generator = generator or build_generator(settings)
    components: dict[str, object] = {"classifier": engine}
    if image_generator is not None:
        components["generator"] = image_generator

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            if classifier is None:
                await engine.start()  # type: ignore[attr-defined]
                stack.push_async_callback(engine.stop, settings.shutdown_grace_s)  # type: ignore[attr-defined]
            fetch_resolver = SystemResolver(settings.dns_threads, settings.dns_timeout_s)
            stack.callback(fetch_resolver.close)
            app.state.image_fetcher = await stack.enter_async_context(
                ImageFetcher(FetchConfig.from_settings(settings), fetch_resolver)
            )
            if image_generator is not None:
                app.state.generate_service = await _start_generation(
                    stack, settings, engine, image_generator, metrics, owned=generator is None
                )
                app.state.jobs = await start_jobs(
                    stack, settings, app.state.generate_service, metrics
                )
            if rate_limiter is not None:
                stack.push_async_callback(rate_limiter.close)
            metrics.ready.set(1)
            try:
                yield
            finally:
                app.state.stopping = True
                metrics.ready.set(0)

    app = FastAPI(
        title="safegen",
        version=__version__,
        summary="NSFW image classification, and image generation with scoring and delivery",
        lifespan=lifespan,
        docs_url=None,  # /docs comes from api/console.py, with local assets (no CDN)
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.classifier = engine
    app.state.generate_service = None
    app.state.image_fetcher = None  # built by the lifespan
    app.state.jobs = None
    app.state.auth = auth
    app.state.rate_limiter = rate_limiter
    app.state.stopping = False
    app.state.readiness = lambda: {
        name: bool(getattr(part, "ready", True)) for name, part in components.items()
    }
    install_error_handlers(app)
    # Added last = outermost: observability sees (and counts) the body limit's 413s too.
    app.add_middleware(
        BodySizeLimitMiddleware, max_bytes=settings.max_request_bytes,
        on_reject=lambda: metrics.rejections.labels(reason="too_large").inc(),
    )
    app.add_middleware(ObservabilityMiddleware, metrics=metrics)
    app.include_router(health.router)
    app.include_router(classify.router)
    app.include_router(generate.router)
    app.include_router(info.router)
    app.include_router(console.router)
    app.include_router(generations.router)
    app.include_router(moderations.router)
    return app


async def _start_generation(
    stack: AsyncExitStack, settings: Settings, classifier: Classifier, generator: Generator,
    metrics: Metrics, *, owned: bool,
) -> GenerateService:
    """Start the generator, upscaler and uploader; the returned service drains first on exit."""
    if owned:
        await generator.start()
        stack.push_async_callback(generator.stop)
    upscaler = build_upscaler(settings.upscaler, settings.device, settings.model_cache_dir)
    if upscaler is not None:
        await upscaler.start()
        stack.push_async_callback(upscaler.stop)
    resolver = SystemResolver(settings.dns_threads, settings.dns_timeout_s)
    stack.callback(resolver.close)
    uploader = Uploader(UploadConfig.from_settings(settings), resolver)
    stack.push_async_callback(uploader.aclose)
    service = GenerateService(
        generator, classifier, uploader, GenerateConfig.from_settings(settings), metrics, upscaler,
    )
    stack.push_async_callback(service.drain, settings.shutdown_grace_s)
    return service

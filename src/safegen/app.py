"""The app factory: ``create_app(settings)`` builds the FastAPI app and its lifespan.

The lifespan builds the engines, loads and warms them, flips readiness, and on shutdown flips it
back, lets in-flight work finish within the grace period and stops the engines in order.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

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
from safegen.fetching import FetchConfig, ImageFetcher
from safegen.generation.base import Generator
from safegen.generation.diffusers_backend import build_generator
from safegen.generation.upscale import build_upscaler
from safegen.jobs.setup import start_jobs
from safegen.metrics import Metrics
from safegen.moderation.engine import Classifier, ClassifierEngine, EngineConfig
from safegen.services.generate_service import GenerateConfig, GenerateService
from safegen.settings import Settings

logger = logging.getLogger("safegen.app")


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
    # Built here unless the caller brought its own (then the caller starts and stops it).
    own_engine: ClassifierEngine | None = None
    nsfw_classifier: Classifier
    if classifier is None:
        own_engine = ClassifierEngine(EngineConfig.from_settings(settings), metrics)
        nsfw_classifier = own_engine
    else:
        nsfw_classifier = classifier
    image_generator = generator or build_generator(settings)
    components: dict[str, object] = {"classifier": nsfw_classifier}
    if image_generator is not None:
        components["generator"] = image_generator

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            if own_engine is not None:
                await own_engine.start()
                stack.push_async_callback(own_engine.stop, settings.shutdown_grace_s)
            fetch_resolver = SystemResolver(settings.dns_threads, settings.dns_timeout_s)
            stack.callback(fetch_resolver.close)
            app.state.image_fetcher = await stack.enter_async_context(
                ImageFetcher(FetchConfig.from_settings(settings), fetch_resolver)
            )
            if image_generator is not None:
                app.state.generate_service = await _start_generation(
                    stack, settings, nsfw_classifier, image_generator, metrics,
                    owned=generator is None,
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
    app.state.classifier = nsfw_classifier
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
    upscaler = build_upscaler(settings)
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

"""The app factory: ``create_app(settings)`` builds the FastAPI app and its lifespan.

The lifespan builds the engines, loads and warms them, flips readiness, and on shutdown flips it
back, lets in-flight work finish within the grace period and stops the engines in order.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from safegen import __version__
from safegen.api import classify, health
from safegen.api.errors import install_error_handlers
from safegen.api.observability import ObservabilityMiddleware
from safegen.imaging import ImageLimits
from safegen.metrics import Metrics
from safegen.moderation.engine import Classifier, ClassifierEngine, EngineConfig
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
        decode_threads=settings.decode_threads,
        torch_threads=settings.torch_threads,
        limits=ImageLimits(
            max_bytes=settings.max_image_bytes,
            max_pixels=settings.max_image_pixels,
            formats=tuple(settings.allowed_formats),
        ),
    )


def preflight(settings: Settings) -> None:
    """Fail fast, before the server starts, when a configured model cannot be found.

    Cheap checks only (a directory exists, a hub id is cached or the hub may be asked); loading
    itself happens in the lifespan.
    """
    from safegen.hub import resolve_model
    from safegen.moderation.loading import NSFW_ENV_VAR

    resolve_model(settings.nsfw_model, kind="NSFW classifier", env_var=NSFW_ENV_VAR,
                  cache_dir=settings.model_cache_dir)


def create_app(
    settings: Settings | None = None,
    *,
    classifier: Classifier | None = None,
) -> FastAPI:
    """Build the app. ``classifier`` replaces the in-process engine (a remote handle, a fake)."""
    settings = settings or Settings()
    metrics = Metrics()
    owned = classifier is None
    engine: Classifier = classifier or ClassifierEngine(engine_config(settings), metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if owned:
            await engine.start()  # type: ignore[attr-defined]
        metrics.ready.set(1)
        try:
            yield
        finally:
            app.state.stopping = True
            metrics.ready.set(0)
            if owned:
                await engine.stop(settings.shutdown_grace_s)  # type: ignore[attr-defined]

    app = FastAPI(
        title="safegen",
        version=__version__,
        summary="NSFW image classification, and image generation with scoring and delivery",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.classifier = engine
    app.state.stopping = False
    app.state.readiness = lambda: {"classifier": engine.ready}
    install_error_handlers(app)
    app.add_middleware(ObservabilityMiddleware, metrics=metrics)
    app.include_router(health.router)
    app.include_router(classify.router)
    return app

"""Checks run before the server starts: every configured model can be had, and what it needs."""

from __future__ import annotations

from pathlib import Path

from safegen.errors import ModelUnavailable
from safegen.generation.diffusers_backend import GENERATOR_ENV_VAR, GENERATOR_KIND, build_generator
from safegen.settings import Settings


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
        models.append((settings.generator_model, GENERATOR_KIND, GENERATOR_ENV_VAR))
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

"""Where model weights come from: a local directory or the Hugging Face hub (or its cache).

Every model the service loads (the NSFW classifier, the image generator, a model-based upscaler)
goes through these helpers, so a missing model always fails the same way: a ``ModelUnavailable``
whose message is one line naming the model, the setting to change and the command that fixes it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from safegen.errors import ModelUnavailable

logger = logging.getLogger("safegen.hub")


def is_local(model: str) -> bool:
    """True when ``model`` names an existing directory (rather than a hub id)."""
    return Path(model).expanduser().is_dir()


def _looks_like_path(model: str) -> bool:
    # A hub id is "name" or "owner/name"; anything else with path syntax is meant as a directory,
    # and asking the hub about it would only produce a confusing "invalid repo id" error.
    return (
        model.startswith(("/", "./", "../", "~", "\\"))
        or model.count("/") > 1
        or (len(model) > 1 and model[1] == ":")  # Windows drive letter
    )


def _offline() -> bool:
    from huggingface_hub import constants

    # huggingface_hub reads HF_HUB_OFFLINE once at import; the environment may have changed since.
    env = os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}
    return bool(constants.HF_HUB_OFFLINE) or env


def _capitalised(kind: str) -> str:
    return kind[:1].upper() + kind[1:]


def missing_weights_message(model: str, kind: str, env_var: str) -> str:
    """The one line shown when a hub model is not on this machine and cannot be fetched."""
    return (
        f"{_capitalised(kind)} '{model}' is not available offline: run `safegen download {model}` "
        f"on a connected machine (fills the Hugging Face cache) or set {env_var} to a local "
        f"directory holding the model."
    )


def load_failed_message(model: str, kind: str, env_var: str) -> str:
    """The one line shown when the files are there but do not load (corrupt, wrong kind)."""
    return (
        f"{_capitalised(kind)} '{model}' could not be loaded (details in the server log): set "
        f"{env_var} to a hub id or a local directory holding a complete model of the right kind."
    )


def model_unavailable(
    model: str, *, kind: str, env_var: str, exc: BaseException
) -> ModelUnavailable:
    """Turn an exception raised while loading ``model`` into the right ``ModelUnavailable``.

    Logs the original exception (the client-facing message never carries its text).
    """
    logger.error("loading %s %r failed", kind, model, exc_info=exc)
    if not is_local(model) and isinstance(exc, OSError):
        # transformers/diffusers report files missing from the cache (or unreachable) as OSError.
        return ModelUnavailable(missing_weights_message(model, kind, env_var))
    return ModelUnavailable(load_failed_message(model, kind, env_var))


def resolve_model(model: str, *, kind: str, env_var: str, cache_dir: Path | None) -> str:
    """Return what to pass to ``from_pretrained``: a local directory, or the hub id.

    A hub id is returned only when it can be loaded: its snapshot is in the cache, or the hub may be
    contacted (not offline). Otherwise ``ModelUnavailable`` is raised at once, before any loading.
    """
    if is_local(model):
        return str(Path(model).expanduser().resolve())
    if not model.strip() or _looks_like_path(model):
        raise ModelUnavailable(
            f"{_capitalised(kind)} directory '{model}' does not exist: set {env_var} to a "
            f"directory holding the model or to a Hugging Face hub id."
        )
    if _offline() and not _in_cache(model, cache_dir):
        raise ModelUnavailable(missing_weights_message(model, kind, env_var))
    return model


def _in_cache(model: str, cache_dir: Path | None) -> bool:
    from huggingface_hub import snapshot_download

    try:
        snapshot_download(model, cache_dir=cache_dir, local_files_only=True)
    except Exception:  # not cached, or not even a valid repo id: either way not loadable offline
        return False
    return True


def download(model: str, cache_dir: Path | None = None) -> Path:
    """Fetch every file of ``model`` into the hub cache (``safegen download``, connected machine).

    Raises ``ModelUnavailable`` (one line, no library text) when the hub cannot be reached or the
    repository does not exist.
    """
    from huggingface_hub import snapshot_download

    if is_local(model):
        return Path(model).expanduser().resolve()
    try:
        return Path(snapshot_download(model, cache_dir=cache_dir))
    except Exception as exc:
        logger.debug("downloading %r failed", model, exc_info=exc)  # the caller says it in one line
        where = "offline mode is on (HF_HUB_OFFLINE)" if _offline() else "see the log for why"
        raise ModelUnavailable(
            f"Could not download '{model}' from the Hugging Face hub ({where}): check the model "
            f"id, the network and HF_TOKEN for gated models."
        ) from None

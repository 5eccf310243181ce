"""Where model weights come from: a local directory or the Hugging Face hub (or its cache).

Every model the service loads (the NSFW classifier, the image generator, a model-based upscaler)
goes through these helpers, so a missing model always fails the same way: a ``ModelUnavailable``
whose message is one line naming the model, the setting to change and the command that fixes it.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

from safegen.errors import ModelUnavailable

logger = logging.getLogger("safegen.hub")


def is_local(model: str) -> bool:
    """True when ``model`` names an existing directory (rather than a hub id)."""
    try:
        return Path(model).expanduser().is_dir()
    except OSError:  # e.g. behind a directory this process may not enter (resolve_model says so)
        return False


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
        directory = Path(model).expanduser().resolve()
        check_readable(directory, kind=kind)
        return str(directory)
    if _looks_like_path(model):
        blocked = _unsearchable_ancestor(Path(model).expanduser())
        if blocked is not None:
            raise ModelUnavailable(_unreadable_message(blocked, kind, None))
    if not model.strip() or _looks_like_path(model):
        raise ModelUnavailable(
            f"{_capitalised(kind)} directory '{model}' does not exist: set {env_var} to a "
            f"directory holding the model or to a Hugging Face hub id."
        )
    if _offline() and not _in_cache(model, cache_dir):
        raise ModelUnavailable(missing_weights_message(model, kind, env_var))
    return model


def _user() -> str:
    uid = os.geteuid()
    try:
        import pwd

        return f"user {pwd.getpwuid(uid).pw_name} (uid {uid})"
    except (ImportError, KeyError):
        return f"uid {uid}"


def _unreadable_message(path: Path, kind: str, model_dir: Path | None) -> str:
    """One line: what cannot be read, by whom, who owns it, and the three ways out."""
    what = "directory" if path.is_dir() else "file"
    uid = os.geteuid()
    try:
        info = path.stat()
        owner_uid: int | None = info.st_uid
        owner = f" (owner uid {info.st_uid}, mode {stat.S_IMODE(info.st_mode):o})"
    except OSError:
        owner_uid, owner = None, ""
    if model_dir is None:  # a directory above the model that this process may not enter
        fix = f"let it in (chmod a+x {path})"
    else:
        fix = (
            f"make the model readable (chmod -R a+rX {model_dir}) or owned by uid {uid} "
            f"(chown -R {uid} {model_dir})"
        )
    # Running as the owner is a way out unless the owner is root (never advise serving as root).
    if owner_uid == 0:
        run_as = ""
    elif owner_uid is None:
        run_as = ", or run safegen as the files' owner"
    else:
        run_as = f", or run safegen as uid {owner_uid}"
    return (
        f"{_capitalised(kind)} {what} {path} is not readable by {_user()}{owner}: {fix}{run_as}."
    )


def _readable(path: Path, *, directory: bool) -> bool:
    # Permission of this process (effective ids, as open() sees them), not of its real user.
    mode = os.R_OK | os.X_OK if directory else os.R_OK
    return os.access(path, mode, effective_ids=os.access in os.supports_effective_ids)


def _unsearchable_ancestor(path: Path) -> Path | None:
    """The first directory above ``path`` that this process may not enter, if any."""
    for ancestor in reversed(path.absolute().parents):
        try:
            if not ancestor.is_dir():
                return None
        except OSError:
            return None
        if not _readable(ancestor, directory=True):
            return ancestor
    return None


def check_readable(directory: Path, *, kind: str) -> None:
    """Raise ``ModelUnavailable`` naming the first part of a local model this process cannot read.

    A model directory written by another user (``save_pretrained`` leaves its files mode 600) is
    otherwise reported by the loaders as a missing file, deep in a traceback: the usual case is a
    volume filled as root and served by a container's non-root user. Hidden folders (``.git``,
    ``.cache``) are not read by the loaders and are not checked; broken links are left to them.
    """
    blocked = _unsearchable_ancestor(directory)
    if blocked is not None:
        raise ModelUnavailable(_unreadable_message(blocked, kind, None))
    if not _readable(directory, directory=True):
        raise ModelUnavailable(_unreadable_message(directory, kind, directory))
    for root, dirs, files in os.walk(directory):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in dirs:
            sub = Path(root) / name
            if not _readable(sub, directory=True):
                raise ModelUnavailable(_unreadable_message(sub, kind, directory))
        for name in sorted(files):
            file = Path(root) / name
            if not _readable(file, directory=False) and file.exists():
                raise ModelUnavailable(_unreadable_message(file, kind, directory))


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

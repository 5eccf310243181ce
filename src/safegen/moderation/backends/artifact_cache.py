"""The on-disk cache of exported models (ONNX files, OpenVINO IR), shared by exporting backends.

An entry is one or more files named ``<stem><suffix>`` plus a sidecar ``<stem>.json`` recording the
SHA-256 of each. The stem carries a key over everything that decides the files' bytes (the model's
source and a digest of its weights, the preprocessing, the precision, library versions), so a new
model or version builds a new entry. Builds run in a scratch directory inside the cache and are
moved in with ``rename`` (readers see an old file or a whole new one), the sidecar last; an advisory
``flock`` stops two processes building the same cache at once; an entry whose files do not match
its sidecar (a crash, a truncated copy) is built again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

from safegen.moderation.loading import LoadedClassifier

logger = logging.getLogger("safegen.moderation")


def cache_root(cache_dir: Path | None, kind: str) -> Path:
    """``<cache_dir>/safegen-<kind>`` when a model cache dir is set, else the user cache dir."""
    if cache_dir is not None:
        return Path(cache_dir) / f"safegen-{kind}"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "safegen" / kind


def weights_digest(model: object) -> str:
    """SHA-256 over every tensor of the state dict (about 0.4 s for ViT-B/16's 344 MB)."""
    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):  # type: ignore[attr-defined]
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
        raw = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(raw.view(torch.uint8).numpy())  # bytes, whatever the dtype (bf16 too)
    return digest.hexdigest()


def model_facts(loaded: LoadedClassifier) -> dict[str, str]:
    """The model's identity for a cache key: its source, its weights and its preprocessing."""
    source = getattr(loaded.model.config, "_name_or_path", "") or loaded.name  # type: ignore[attr-defined]
    return {
        "source": str(source),
        "weights": weights_digest(loaded.model),
        "preprocessing": repr(loaded.preprocessing),
    }


def digest_of(facts: Mapping[str, object]) -> str:
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def cache_lock(root: Path) -> Iterator[None]:
    """One builder per cache dir across processes (workers starting together build once)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: atomic renames still keep the cache consistent
        yield
        return
    with (root / ".lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _intact(root: Path, stem: str, suffixes: Sequence[str]) -> bool | None:
    """True if the entry matches its sidecar, False if it does not, None if there is none."""
    sidecar = root / f"{stem}.json"
    if not sidecar.exists():
        return None
    try:
        recorded = json.loads(sidecar.read_text()).get("sha256", {})
        return all(
            (root / f"{stem}{s}").exists() and recorded.get(s) == file_sha256(root / f"{stem}{s}")
            for s in suffixes
        )
    except (OSError, ValueError, AttributeError):
        return False


def cached_build(
    root: Path, stem: str, suffixes: Sequence[str], build: Callable[[Path], None], *,
    what: str, meta: Mapping[str, object],
) -> Path:
    """Return ``root/<stem><suffixes[0]>``, building the entry first if it is missing or corrupt.

    ``build(target)`` writes ``target`` (named ``model<suffixes[0]>`` in a scratch directory) and
    any companions ``model<suffix>`` beside it.
    """
    root.mkdir(parents=True, exist_ok=True)
    primary = root / f"{stem}{suffixes[0]}"
    with cache_lock(root):
        state = _intact(root, stem, suffixes)
        if state:
            return primary
        if state is False:
            logger.warning("cached %s %s is corrupt; building it again", what, primary.name)
        logger.info("building the %s, once per model and version", what)
        with tempfile.TemporaryDirectory(dir=root, prefix=".build-") as scratch:
            staged = {s: Path(scratch) / f"model{s}" for s in suffixes}
            build(staged[suffixes[0]])
            record = {**meta, "sha256": {s: file_sha256(path) for s, path in staged.items()}}
            for suffix, path in staged.items():
                path.replace(root / f"{stem}{suffix}")  # atomic per file
            staged_meta = Path(scratch) / "meta.json"
            staged_meta.write_text(json.dumps(record))
            staged_meta.replace(root / f"{stem}.json")  # last: the entry is complete
    return primary


def discard(primary: Path, suffixes: Sequence[str]) -> None:
    """Remove an entry that reads back intact but does not load (written by another version)."""
    for suffix in (*suffixes, ".json"):
        primary.with_suffix(suffix).unlink(missing_ok=True)

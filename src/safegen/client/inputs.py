"""What ``classify`` accepts, turned into an ordered list of sources.

Paths (files, or folders expanded to their image files in sorted order), raw bytes, PIL images
(duck-typed: the client does not import PIL) and http(s) URLs. Bytes are read only when their
request is about to be sent, so a folder of thousands of files is never all in memory.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safegen.client.models import ImageProblem

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif"})


@dataclass(frozen=True)
class Source:
    """One input image, at ``index`` in the caller's order."""

    index: int
    label: str  # shown in results: the path, the URL, or "bytes #i"
    filename: str | None
    path: Path | None = None
    data: bytes | None = None
    url: str | None = None

    @property
    def size_hint(self) -> int:
        """Bytes this image will add to a request, when known before reading it."""
        if self.data is not None:
            return len(self.data)
        if self.path is not None:
            try:
                return self.path.stat().st_size
            except OSError:
                return 0
        return 0


def iter_image_files(folder: Path, recursive: bool) -> Iterator[Path]:
    pattern = "**/*" if recursive else "*"
    yield from sorted(
        p for p in folder.glob(pattern) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    )


def is_url(item: object) -> bool:
    return isinstance(item, str) and item.startswith(("http://", "https://"))


def _is_pil_image(item: object) -> bool:
    return type(item).__module__.startswith("PIL.") and hasattr(item, "save")


def _single(item: object) -> bool:
    return isinstance(item, str | os.PathLike | bytes | bytearray | memoryview) or _is_pil_image(
        item
    )


def expand(inputs: Any, recursive: bool = False) -> list[Source]:
    """Every input as a :class:`Source`, folders expanded; a lone item counts as a list of one."""
    items: Iterable[Any] = [inputs] if _single(inputs) else inputs
    sources: list[Source] = []
    for item in items:
        index = len(sources)
        if isinstance(item, bytes | bytearray | memoryview):
            data = bytes(item)
            sources.append(Source(index, f"bytes #{index}", f"image-{index}", data=data))
        elif _is_pil_image(item):
            buffer = io.BytesIO()
            item.save(buffer, format="PNG")  # lossless: the server sees the same pixels
            sources.append(
                Source(index, f"image #{index}", f"image-{index}.png", data=buffer.getvalue())
            )
        elif is_url(item):
            name = item.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1] or f"image-{index}"
            sources.append(Source(index, item, name, url=item))
        elif isinstance(item, str | os.PathLike):
            path = Path(item)
            files = list(iter_image_files(path, recursive)) if path.is_dir() else [path]
            for file in files:
                sources.append(Source(len(sources), str(file), file.name, path=file))
        else:
            raise TypeError(
                f"cannot classify a {type(item).__name__}: pass paths, folders, bytes, PIL "
                "images or http(s) URLs"
            )
    return sources


def too_large(size: int, max_bytes: int) -> ImageProblem:
    return ImageProblem(
        "too_large", f"image is larger than {max_bytes} bytes, the server's limit "
        f"(max_image_bytes); it has {size} bytes",
    )


def read_local(source: Source, max_bytes: int) -> bytes | ImageProblem:
    """The bytes of a path or in-memory source, or why they cannot be sent."""
    if source.data is not None:
        data = source.data
    else:
        assert source.path is not None
        try:
            with source.path.open("rb") as handle:
                data = handle.read(max_bytes + 1)
        except OSError as exc:
            return ImageProblem("unreadable_file", f"cannot read {source.path}: {exc.strerror}")
    if len(data) > max_bytes:
        return too_large(len(data), max_bytes)
    return data

"""Image bytes for tests: realistic JPEGs and hostile files."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image


def photo_like(seed: int, size: tuple[int, int] = (512, 1024)) -> Image.Image:
    """A smooth random RGB image with some detail (closer to a photo than white noise)."""
    rng = np.random.default_rng(seed)
    coarse = (rng.random((size[1] // 16, size[0] // 16, 3)) * 255).astype(np.uint8)
    image = Image.fromarray(coarse).resize(size, Image.Resampling.BICUBIC)
    detail = rng.normal(0, 12, (size[1], size[0], 3))
    return Image.fromarray(np.clip(np.asarray(image) + detail, 0, 255).astype(np.uint8))


def encode(image: Image.Image, fmt: str = "JPEG", **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def jpeg(seed: int = 0, size: tuple[int, int] = (512, 1024), quality: int = 90) -> bytes:
    return encode(photo_like(seed, size), "JPEG", quality=quality)


def png(seed: int = 0, size: tuple[int, int] = (64, 48), mode: str = "RGB") -> bytes:
    return encode(photo_like(seed, size).convert(mode), "PNG")


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_with_declared_size(width: int, height: int) -> bytes:
    """A tiny PNG file whose header claims ``width`` x ``height`` pixels (a decompression bomb's
    calling card): only the header is honest about nothing."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    pixels = zlib.compress(b"\x00" * 16)
    return (
        b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", pixels)
        + _png_chunk(b"IEND", b"")
    )


def one_bit_png(width: int, height: int) -> bytes:
    """A real, valid 1-bit PNG of ``width`` x ``height`` black pixels: a few KB on the wire,
    a byte a pixel (and three more for RGB) once decoded."""
    return _black_png(width, height, bit_depth=1, row_bytes=(width + 7) // 8)


def _black_png(width: int, height: int, *, bit_depth: int, row_bytes: int) -> bytes:
    row = b"\x00" + b"\x00" * row_bytes  # filter byte + pixels
    compressor = zlib.compressobj(9)
    data = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, bit_depth, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", data)
        + _png_chunk(b"IEND", b"")
    )


def decompression_bomb_png(side: int = 12_000) -> bytes:
    """A real, valid PNG of ``side`` x ``side`` black pixels that compresses to a few hundred KB."""
    return _black_png(side, side, bit_depth=8, row_bytes=side)


def truncated_jpeg(seed: int = 0) -> bytes:
    data = jpeg(seed, (256, 256))
    return data[: len(data) // 2]


def polyglot() -> bytes:
    """A GIF header followed by an HTML/script payload: looks like an image to a sniffer."""
    return b"GIF89a\x01\x00\x01\x00<script>alert(1)</script>" + b"\x00" * 64


def animation(fmt: str, count: int, hot: set[int] | frozenset[int] = frozenset(),
              size: tuple[int, int] = (32, 32)) -> bytes:
    """An animated GIF, WEBP or PNG (APNG) of ``count`` solid frames, each a distinct colour.

    Frames in ``hot`` are pure red, the others have no red at all, so a model that reads red
    tells the frames apart.
    """
    frames = [
        Image.new("RGB", size, (255, 0, 0) if i in hot else (0, (37 * i) % 200 + 40, i % 50))
        for i in range(count)
    ]
    params: dict[str, object] = {"save_all": True, "append_images": frames[1:], "duration": 40,
                                 "loop": 0}
    if fmt == "WEBP":
        params["lossless"] = True
    return encode(frames[0], fmt, **params)

"""Property-based fuzzing of image decoding: hostile bytes never escape as anything but our errors.

``open_checked`` and ``decode_for_model`` are fed random bytes, valid JPEG/PNG/GIF/WebP files with
bytes flipped, inserted or deleted, truncations, and headers spliced onto garbage. Each call either
returns a ``(224, 224, 3)`` uint8 array or raises a ``SafegenError`` subclass; nothing else (no
``OSError``, ``SyntaxError``, ``struct.error``, ``ValueError`` from PIL) may escape, because the
engine turns only ``SafegenError`` into a per-image error entry.
"""

from __future__ import annotations

import struct
import zlib
from functools import cache

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from safegen.errors import SafegenError, TooLarge
from safegen.imaging import ImageLimits, decode_for_model, open_checked
from safegen.settings import Settings
from tests.fuzz import DERANDOMIZE, examples
from tests.support import images

SIZE = (224, 224)
# Small limits so that fuzzed headers claiming huge images hit the pixel check quickly.
LIMITS = ImageLimits.from_settings(
    Settings(max_image_bytes=256 * 1024, max_image_pixels=4_000_000)
)
FUZZ = settings(
    deadline=None, database=None, derandomize=DERANDOMIZE,
    suppress_health_check=[HealthCheck.too_slow],
)
FORMATS = ("JPEG", "PNG", "GIF", "WEBP")


@cache
def seed_file(fmt: str, mode: str = "RGB") -> bytes:
    """A small valid file of ``fmt``: the material the mutations start from."""
    image = images.photo_like(3, (48, 40)).convert(mode)
    params: dict[str, object] = {"quality": 80} if fmt == "JPEG" else {}
    if fmt == "JPEG":
        params["progressive"] = mode == "L"
    return images.encode(image, fmt, **params)


@cache
def exif_file(fmt: str) -> bytes:
    """A small file carrying EXIF (orientation and a few tags): exif_transpose parses it."""
    image = images.photo_like(4, (40, 48))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate
    exif[0x010F] = "fuzz-camera"
    exif[0x0132] = "2024:01:01 00:00:00"
    return images.encode(image, fmt, exif=exif.tobytes())


SEEDS = st.sampled_from(
    [seed_file(f) for f in FORMATS] + [seed_file("PNG", "RGBA"), seed_file("JPEG", "L"),
                                       seed_file("PNG", "P"), seed_file("WEBP", "RGBA")]
    + [exif_file(f) for f in ("JPEG", "PNG", "WEBP")]
)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A valid file with a few bytes flipped, inserted or removed, possibly truncated."""
    data = bytearray(draw(SEEDS))
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["flip", "insert", "delete", "header"]))
        # Headers are where parsers trust sizes and offsets: aim a share of mutations there.
        limit = min(len(data), 160) if kind == "header" else len(data)
        if limit == 0:
            break
        at = draw(st.integers(0, limit - 1))
        if kind in ("flip", "header"):
            data[at] = draw(st.integers(0, 255))
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        else:
            del data[at : at + draw(st.integers(1, 16))]
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    return bytes(data)


@st.composite
def spliced(draw: st.DrawFn) -> bytes:
    """A real signature (and maybe a real header) followed by garbage."""
    seed = draw(SEEDS)
    keep = draw(st.integers(2, min(len(seed), 80)))
    return seed[:keep] + draw(st.binary(max_size=512))


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    crc = struct.pack(">I", zlib.crc32(kind + payload))
    return struct.pack(">I", len(payload)) + kind + payload + crc


@st.composite
def png_headers(draw: st.DrawFn) -> bytes:
    """PNGs with valid CRCs but fuzzed IHDR fields (size, bit depth, colour type, interlace)."""
    width, height = draw(st.integers(0, 2**31)), draw(st.integers(0, 2**31))
    fields = struct.pack(
        ">IIBBBBB", width, height, draw(st.sampled_from([0, 1, 2, 4, 8, 16, 3])),
        draw(st.sampled_from([0, 2, 3, 4, 6, 5])), 0, 0, draw(st.integers(0, 2)),
    )
    idat = zlib.compress(draw(st.binary(max_size=256)))
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", fields) + _png_chunk(b"IDAT", idat)
            + _png_chunk(b"IEND", b""))


HOSTILE = st.one_of(st.binary(max_size=2048), mutated(), spliced(), png_headers())


def _decode(data: bytes, *, fast: bool) -> str:
    try:
        pixels = decode_for_model(data, LIMITS, SIZE, fast=fast)
    except SafegenError as exc:
        error: SafegenError = exc
    else:
        assert pixels.shape == (SIZE[1], SIZE[0], 3)
        assert pixels.dtype == np.uint8
        return "decoded"
    assert error.message  # written for a person, never a library's text
    assert "Traceback" not in error.message
    return error.code


@settings(FUZZ, max_examples=examples(1000))
@given(data=HOSTILE, fast=st.booleans())
def test_decode_for_model_raises_only_safegen_errors(data: bytes, fast: bool) -> None:
    _decode(data, fast=fast)


def test_the_fuzzing_reached_every_outcome() -> None:
    """The generators are not all rejected at the first byte: some fuzzed files still decode.

    It draws its own examples (a fixed seed, whatever ran before), so it holds alone and in any
    order."""
    outcomes: dict[str, int] = {}

    @settings(FUZZ, max_examples=200, derandomize=True)
    @given(data=HOSTILE, fast=st.booleans())
    def sample(data: bytes, fast: bool) -> None:
        outcome = _decode(data, fast=fast)
        outcomes[outcome] = outcomes.get(outcome, 0) + 1

    sample()
    print("decode outcomes:", dict(sorted(outcomes.items())))
    assert sum(outcomes.values()) >= 100  # hypothesis ran the examples, not a handful
    assert outcomes.get("decoded", 0) > 0
    assert outcomes.get("invalid_image", 0) > 0


@settings(FUZZ, max_examples=examples(300))
@given(data=HOSTILE)
def test_open_checked_enforces_limits_from_the_header_only(data: bytes) -> None:
    try:
        image = open_checked(data, LIMITS)
    except SafegenError:
        return
    width, height = image.size
    assert 0 < width * height <= LIMITS.max_pixels
    assert image.format in LIMITS.formats


@settings(FUZZ, max_examples=examples(300))
@given(width=st.integers(1, 2**31 - 1), height=st.integers(1, 2**31 - 1))
def test_declared_sizes_over_the_limit_never_decode(width: int, height: int) -> None:
    data = images.png_with_declared_size(width, height)
    if width * height > LIMITS.max_pixels:
        with pytest.raises(TooLarge):
            decode_for_model(data, LIMITS, SIZE, fast=True)
    else:
        _decode(data, fast=True)  # small but lying about its data: any SafegenError is fine

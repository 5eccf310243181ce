"""Safe image decoding (limits checked before pixels are decoded), JPEG encoding and hashing."""

from __future__ import annotations

import contextlib
import hashlib
import io
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from safegen.errors import ImageError, TooLarge, UnsupportedFormat
from safegen.settings import Settings

# Our own pixel limit is checked before decoding; PIL's bomb check would only duplicate it with a
# less helpful message, and its warning would turn into an error under strict test settings.
Image.MAX_IMAGE_PIXELS = None


@dataclass(frozen=True)
class ImageLimits:
    """What an uploaded image may be.

    From ``SAFEGEN_MAX_IMAGE_BYTES``, ``SAFEGEN_MAX_IMAGE_PIXELS`` and ``SAFEGEN_ALLOWED_FORMATS``.
    """

    max_bytes: int
    max_pixels: int
    formats: tuple[str, ...]

    @classmethod
    def from_settings(cls, settings: Settings) -> ImageLimits:
        return cls(settings.max_image_bytes, settings.max_image_pixels,
                   tuple(settings.allowed_formats))


def open_checked(data: bytes, limits: ImageLimits) -> Image.Image:
    """Open an image lazily and enforce the limits using only its header.

    Raises ``ImageError`` (or a subclass) naming the problem; never decodes pixels.
    """
    if not data:
        raise ImageError("the file is empty")
    if len(data) > limits.max_bytes:
        raise TooLarge(
            f"image is {len(data)} bytes; the limit is {limits.max_bytes} "
            "(SAFEGEN_MAX_IMAGE_BYTES)"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ImageError("not a recognised image file") from None
    except Exception:  # PIL raises many types on hostile headers
        raise ImageError("the image header is corrupt") from None
    if image.format not in limits.formats:
        raise UnsupportedFormat(
            f"format {image.format} is not accepted; allowed: {', '.join(limits.formats)}"
        )
    width, height = image.size
    if width <= 0 or height <= 0:
        raise ImageError("the image has no pixels")
    if width * height > limits.max_pixels:
        raise TooLarge(
            f"image is {width}x{height} = {width * height} pixels; the limit is "
            f"{limits.max_pixels} (SAFEGEN_MAX_IMAGE_PIXELS)"
        )
    return image


def to_rgb(image: Image.Image) -> Image.Image:
    """Apply the EXIF orientation and convert to RGB, as ``transformers.image_utils.load_image``."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image = ImageOps.exif_transpose(image) or image
            return image.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        raise ImageError("the image data is truncated or corrupt") from None


def decode_for_model(
    data: bytes, limits: ImageLimits, size: tuple[int, int], *, fast: bool
) -> np.ndarray:
    """Decode ``data`` and resize it to ``size`` (width, height) with bilinear resampling.

    Returns an ``(height, width, 3)`` uint8 array. With ``fast``, a JPEG is decoded at a reduced
    scale (libjpeg's DCT scaling via ``draft``) no smaller than ``size``; this is the approximate
    path whose parity bound is tested against the transformers pipeline.
    """
    return pixels_for_model(open_checked(data, limits), size, fast=fast)


def pixels_for_model(
    image: Image.Image, size: tuple[int, int], *, fast: bool, budget: DecodeBudget | None = None
) -> np.ndarray:
    """``decode_for_model`` for an image ``open_checked`` has already opened.

    With a ``budget``, the decode waits until the memory it needs is free (and is refused if it
    needs more than the whole budget).
    """
    if fast and image.format == "JPEG":
        image.draft("RGB", size)
    if budget is None:
        return resize_rgb(to_rgb(image), size)
    with budget.reserve(decode_bytes(image)):
        return resize_rgb(to_rgb(image), size)


# Bytes per pixel PIL holds for a decoded image of each mode (1-bit images take a byte a pixel).
_MODE_BYTES = {"1": 1, "L": 1, "P": 1, "LA": 2, "PA": 2, "La": 2, "I;16": 2, "RGB": 3, "YCbCr": 3,
               "LAB": 3, "HSV": 3}


def decode_bytes(image: Image.Image) -> int:
    """Peak memory of decoding ``image`` and converting it to RGB, estimated from the header
    before any pixel exists: its own pixels, the RGB copy, and a byte a pixel of PIL's working
    buffers (measured: a 40 MP 1-bit PNG raised the peak by ~215 MB, estimated here 200 MB)."""
    width, height = image.size
    return width * height * (_MODE_BYTES.get(image.mode, 4) + 4)


class DecodeBudget:
    """Bytes of decoded pixels all decode threads together may hold at once.

    A thread whose image does not fit waits until others release theirs, so the peak stays
    bounded however many threads decode and however the images are crafted (a few KB of 1-bit
    PNG can declare 40 MP). An image needing more than the whole budget is refused.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._used = 0
        self._changed = threading.Condition()

    @property
    def used(self) -> int:
        return self._used

    @contextlib.contextmanager
    def reserve(self, nbytes: int) -> Iterator[None]:
        if nbytes > self.max_bytes:
            raise TooLarge(
                f"decoding this image needs about {nbytes // 2**20} MiB; the limit is "
                f"{self.max_bytes // 2**20} MiB (SAFEGEN_DECODE_MEMORY_MB)"
            )
        with self._changed:
            self._changed.wait_for(lambda: self._used + nbytes <= self.max_bytes)
            self._used += nbytes
        try:
            yield
        finally:
            with self._changed:
                self._used -= nbytes
                self._changed.notify_all()


def resize_rgb(image: Image.Image, size: tuple[int, int]) -> np.ndarray:
    """Resize an RGB image exactly as ``ViTImageProcessor`` does (PIL bilinear, no reducing gap)."""
    if image.mode != "RGB":
        image = to_rgb(image)
    if image.size != size:
        image = image.resize(size, resample=Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.uint8)


def encode_jpeg(image: Image.Image, quality: int) -> bytes:
    """Encode once; the exact bytes are what gets hashed, uploaded and returned."""
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=quality, optimize=True)
    return buffer.getvalue()


def md5_hex(data: bytes) -> str:
    """Hex MD5 of ``data`` (an object name and integrity check, not a security measure)."""
    return hashlib.md5(data, usedforsecurity=False).hexdigest()

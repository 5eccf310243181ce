"""Safe decoding: limits are checked from the header, every bad file gets a named error."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from safegen.errors import ImageError, TooLarge, UnsupportedFormat
from safegen.imaging import (
    ImageLimits,
    decode_for_model,
    encode_jpeg,
    md5_hex,
    open_checked,
    resize_rgb,
)
from safegen.settings import Settings
from tests.support import images

LIMITS = ImageLimits.from_settings(Settings(max_image_bytes=5_000_000, max_image_pixels=4_000_000))


ALLOWED = "allowed: JPEG, PNG, WEBP, GIF"
PIXEL_LIMIT = "the limit is 4000000 (SAFEGEN_MAX_IMAGE_PIXELS)"
# A PNG whose header chunk ends early: Pillow raises ValueError, not "cannot identify".
TRUNCATED_PNG_HEADER = b"\x89PNG\r\n\x1a\n" + (13).to_bytes(4, "big") + b"IHDR\x00\x00"


@pytest.mark.parametrize(
    ("data", "error", "message"),
    [
        (b"", ImageError, "the file is empty"),
        (b"hello, not an image", ImageError, "not a recognised image file"),
        (images.polyglot(), ImageError, "not a recognised image file"),
        (TRUNCATED_PNG_HEADER, ImageError, "the image header is corrupt"),
        (images.png_with_declared_size(100_000, 100_000), TooLarge,
         f"image is 100000x100000 = 10000000000 pixels; {PIXEL_LIMIT}"),
        (images.decompression_bomb_png(4000), TooLarge,
         f"image is 4000x4000 = 16000000 pixels; {PIXEL_LIMIT}"),
        (images.encode(images.photo_like(0, (32, 32)), "BMP"), UnsupportedFormat,
         f"format BMP is not accepted; {ALLOWED}"),
        (images.encode(images.photo_like(0, (32, 32)), "TIFF"), UnsupportedFormat,
         f"format TIFF is not accepted; {ALLOWED}"),
    ],
    ids=["empty", "text", "polyglot", "corrupt-header", "huge-header", "bomb", "bmp", "tiff"],
)
def test_rejections_name_the_problem(data, error, message):
    with pytest.raises(error) as raised:
        decode_for_model(data, LIMITS, (224, 224), fast=True)
    assert raised.value.message == message


def test_truncated_jpeg_is_an_image_error():
    with pytest.raises(ImageError, match="truncated or corrupt"):
        decode_for_model(images.truncated_jpeg(), LIMITS, (224, 224), fast=False)


def test_byte_limit_is_checked_before_parsing():
    with pytest.raises(TooLarge, match="SAFEGEN_MAX_IMAGE_BYTES"):
        open_checked(b"\xff" * 101, ImageLimits.from_settings(Settings(max_image_bytes=100)))


def test_an_image_of_exactly_the_byte_limit_is_accepted():
    data = images.png(1)
    image = open_checked(data, ImageLimits.from_settings(Settings(max_image_bytes=len(data))))
    assert image.size == Image.open(io.BytesIO(data)).size


@pytest.mark.parametrize("fmt", ["PNG", "WEBP", "GIF", "JPEG"])
def test_allowed_formats_decode_to_model_size(fmt):
    data = images.encode(images.photo_like(1, (300, 200)), fmt)
    pixels = decode_for_model(data, LIMITS, (224, 224), fast=True)
    assert pixels.shape == (224, 224, 3)
    assert pixels.dtype == np.uint8


def test_rgba_and_greyscale_become_rgb():
    for mode in ("RGBA", "L", "P"):
        pixels = decode_for_model(images.png(2, mode=mode), LIMITS, (224, 224), fast=True)
        assert pixels.shape == (224, 224, 3)


@pytest.mark.parametrize("mode", ["RGBA", "L", "P"])
def test_in_memory_images_of_any_mode_reach_the_model_as_rgb(mode):
    # A generator may hand the engine an RGBA or greyscale image: it is scored as its RGB copy.
    image = images.photo_like(4, (64, 48)).convert(mode)
    pixels = resize_rgb(image, (32, 32))
    assert pixels.shape == (32, 32, 3)
    assert np.array_equal(pixels, np.asarray(image.convert("RGB").resize((32, 32), Image.BILINEAR)))


def test_gif_uses_its_first_frame():
    frames = [Image.new("RGB", (40, 40), c) for c in ((255, 0, 0), (0, 0, 255))]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:])
    pixels = decode_for_model(buffer.getvalue(), LIMITS, (224, 224), fast=True)
    assert pixels[..., 0].mean() > 200
    assert pixels[..., 2].mean() < 50


def test_exif_orientation_is_applied():
    tall = Image.new("RGB", (40, 80), (0, 0, 0))
    tall.paste((255, 255, 255), (0, 0, 40, 40))  # top half white
    exif = Image.Exif()
    exif[0x0112] = 3  # rotated 180 degrees: the white half must end up at the bottom
    data = images.encode(tall, "JPEG", exif=exif, quality=95)
    pixels = decode_for_model(data, LIMITS, (224, 224), fast=False)
    assert pixels[:100].mean() < 60
    assert pixels[-100:].mean() > 200


def test_fast_jpeg_decode_stays_close_to_exact():
    data = images.jpeg(3)
    exact = decode_for_model(data, LIMITS, (224, 224), fast=False).astype(np.int16)
    fast = decode_for_model(data, LIMITS, (224, 224), fast=True).astype(np.int16)
    assert np.abs(exact - fast).mean() < 3.0  # grey levels out of 255
    assert not np.array_equal(exact, fast)  # the draft path really ran


def test_jpeg_hash_is_of_the_exact_bytes():
    data = encode_jpeg(images.photo_like(4, (64, 64)), quality=90)
    assert data[:2] == b"\xff\xd8"
    assert md5_hex(data) == __import__("hashlib").md5(data).hexdigest()
    assert Image.open(io.BytesIO(data)).format == "JPEG"

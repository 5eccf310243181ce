"""Which frames of an animation to score, and the limits that keep an animation cheap to refuse.

An animated GIF, WebP or PNG scored on its first frame only would let an uploader hide content in
any later frame. Up to ``max_frames`` frames are scored, spread evenly from the first to the last;
the image's score is the worst of them. Each frame of these formats is composed over the previous
ones, so reaching the last frame costs decoding every frame before it: the work grows with frame
count x canvas pixels, and both are bounded from the header before any pixel is decoded.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image

from safegen.errors import ImageError, TooLarge
from safegen.imaging import DecodeBudget, decode_bytes, resize_rgb, to_rgb


@dataclass(frozen=True)
class FrameLimits:
    """Values from :class:`~safegen.settings.Settings` (the one place defaults are written)."""

    max_frames: int  # frames scored per animation (SAFEGEN_MAX_FRAMES)
    max_animation_frames: int  # frames an animation may have (SAFEGEN_MAX_ANIMATION_FRAMES)
    max_animation_pixels: int  # frame count x canvas pixels (SAFEGEN_MAX_ANIMATION_PIXELS)


def is_animated(image: Image.Image) -> bool:
    return bool(getattr(image, "is_animated", False))


def check_animation(image: Image.Image, limits: FrameLimits) -> int:
    """The frame count, once it and frame count x canvas pixels are within the limits."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            count = int(image.n_frames)  # type: ignore[attr-defined]
    except Exception:  # PIL raises many types on hostile headers
        raise ImageError("the animation's frame headers are corrupt") from None
    if count > limits.max_animation_frames:
        raise TooLarge(
            f"animation has {count} frames; the limit is {limits.max_animation_frames} "
            "(SAFEGEN_MAX_ANIMATION_FRAMES)"
        )
    width, height = image.size
    total = count * width * height
    if total > limits.max_animation_pixels:
        raise TooLarge(
            f"animation is {count} frames of {width}x{height} = {total} pixels; the limit is "
            f"{limits.max_animation_pixels} (SAFEGEN_MAX_ANIMATION_PIXELS)"
        )
    return count


def sample_indices(count: int, max_frames: int) -> list[int]:
    """Up to ``max_frames`` frame indices spread evenly over ``count``, first and last included."""
    if count <= max_frames:
        return list(range(count))
    if max_frames == 1:
        return [0]
    step = (count - 1) / (max_frames - 1)
    return [round(i * step) for i in range(max_frames)]  # distinct: step > 1


def decode_frames(
    image: Image.Image, indices: list[int], size: tuple[int, int], budget: DecodeBudget
) -> list[np.ndarray]:
    """The frames at ``indices`` (ascending), each resized to ``size`` like a still image."""
    frames: list[np.ndarray] = []
    # The canvas, the composed frame and its RGB copy are held while walking the animation.
    with budget.reserve(decode_bytes(image)):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                for index in indices:
                    image.seek(index)
                    frames.append(resize_rgb(to_rgb(image), size))
        except ImageError:
            raise
        except (EOFError, OSError, SyntaxError, ValueError):
            raise ImageError("the animation data is truncated or corrupt") from None
    return frames

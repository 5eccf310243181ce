"""Frame sampling and the header limits of animations."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from safegen.errors import TooLarge
from safegen.moderation.frames import FrameLimits, check_animation, sample_indices
from tests.support import images


@pytest.mark.parametrize(("count", "most"), [(40, 8), (9, 8), (1000, 8), (3, 2), (100, 64)])
def test_samples_are_spread_evenly_with_first_and_last(count, most):
    picked = sample_indices(count, most)
    assert len(picked) == most
    assert picked[0] == 0
    assert picked[-1] == count - 1
    assert picked == sorted(set(picked))  # distinct, in order
    gaps = [b - a for a, b in zip(picked, picked[1:], strict=False)]
    assert max(gaps) - min(gaps) <= 1  # evenly spread


def test_short_animations_are_scored_whole():
    assert sample_indices(5, 8) == [0, 1, 2, 3, 4]
    assert sample_indices(8, 8) == list(range(8))
    assert sample_indices(7, 1) == [0]


def _open(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data))


@pytest.mark.parametrize("fmt", ["GIF", "WEBP", "PNG"])
def test_limits_name_the_setting(fmt):
    data = images.animation(fmt, 6, size=(20, 10))
    limits = FrameLimits(max_frames=8, max_animation_frames=100, max_animation_pixels=10_000)
    assert check_animation(_open(data), limits) == 6
    with pytest.raises(TooLarge, match="6 frames.*SAFEGEN_MAX_ANIMATION_FRAMES"):
        check_animation(_open(data), FrameLimits(8, 5, 10_000))
    with pytest.raises(TooLarge, match="1200 pixels.*SAFEGEN_MAX_ANIMATION_PIXELS"):
        check_animation(_open(data), FrameLimits(8, 100, 1199))

"""Admission of classify requests (no model): by images queued, and by the model time they need.

The README: SAFEGEN_MAX_QUEUE_IMAGES, then 503 at once; SAFEGEN_MAX_QUEUE_WAIT_S, a request that
would wait longer (queued images x recent model time per image) gets 503 at once. Retry-After is
the wait the refusal saw: the queued work's model time, or how far it is over the limit.
"""

from __future__ import annotations

import io
from types import SimpleNamespace

import pytest
from PIL import Image

from safegen.errors import Overloaded
from safegen.moderation.base import Score
from safegen.moderation.engine import ClassifierEngine, ModelTimePerImage
from tests.support.engines import engine_config


def engine_with(queued: int, decoding: int, seconds_per_image: float | None, **settings):
    engine = ClassifierEngine(engine_config("unused", **settings))
    engine._decoding = decoding  # admitted images still being decoded count as ahead
    engine._model_time.seconds = seconds_per_image
    batcher = SimpleNamespace(depth=queued, max_queue=engine.config.max_queue_images)
    return engine, batcher


@pytest.mark.parametrize(("queued", "decoding", "count"), [(6, 3, 3), (10, 0, 2), (0, 11, 1)])
def test_more_images_than_the_queue_holds_are_refused_with_the_queued_work_as_retry_after(
    queued, decoding, count
):
    engine, batcher = engine_with(queued, decoding, 0.4, max_queue_images=11,
                                  max_queue_wait_s=1000)
    with pytest.raises(Overloaded) as refused:
        engine._admit(batcher, count)
    assert refused.value.message == (
        "the classifier queue is full (11 images, SAFEGEN_MAX_QUEUE_IMAGES); retry shortly")
    ahead = queued + decoding
    assert refused.value.retry_after_s == max(1, -(-ahead * 4 // 10))  # ceil(ahead x 0.4 s)


def test_the_queue_limit_admits_exactly_its_size():
    engine, batcher = engine_with(6, 3, 0.4, max_queue_images=11, max_queue_wait_s=1000)
    engine._admit(batcher, 2)  # 6 + 3 + 2 = 11: full, not over


def test_an_empty_queue_refusing_a_request_larger_than_it_asks_for_a_second():
    engine, batcher = engine_with(0, 0, None, max_queue_images=4)
    with pytest.raises(Overloaded) as refused:
        engine._admit(batcher, 5)
    assert refused.value.retry_after_s == 1


@pytest.mark.parametrize(("ahead", "seconds", "retry_after"),
                         [(41, 0.25, 1), (48, 0.25, 2), (100, 0.5, 40)])
def test_a_request_that_would_wait_too_long_is_refused_with_the_excess_as_retry_after(
    ahead, seconds, retry_after
):
    engine, batcher = engine_with(ahead, 0, seconds, max_queue_wait_s=10, max_queue_images=512)
    with pytest.raises(Overloaded) as refused:
        engine._admit(batcher, 1)
    assert refused.value.message == (
        f"the classifier is busy: about {ahead * seconds:.0f} s of queued work, more than 10 s "
        "(SAFEGEN_MAX_QUEUE_WAIT_S); retry shortly")
    assert refused.value.retry_after_s == retry_after


def test_a_wait_of_exactly_the_limit_is_admitted():
    engine, batcher = engine_with(40, 0, 0.25, max_queue_wait_s=10, max_queue_images=512)
    engine._admit(batcher, 1)  # 40 x 0.25 s = 10 s


def test_without_a_measured_model_time_only_the_queue_size_limits():
    engine, batcher = engine_with(500, 0, None, max_queue_wait_s=0.001, max_queue_images=512)
    engine._admit(batcher, 12)


def test_model_time_follows_recent_batches():
    """The first batch sets it; each later one moves it a fifth of the way (WEIGHT 0.2)."""
    timer = ModelTimePerImage()
    assert timer.seconds is None
    timer.observe(8, 4.0)
    assert timer.seconds == pytest.approx(0.5)
    timer.observe(2, 3.0)  # 1.5 s per image
    assert timer.seconds == pytest.approx(0.5 + 0.2 * (1.5 - 0.5))


async def test_images_scored_leave_nothing_counted_ahead(tiny_vit_dir):
    # A queue of two images: an image still counted as arriving after it was scored would make
    # the next two-image request's queue look full; one counted off twice would let three in.
    config = engine_config(tiny_vit_dir, max_queue_images=2, device="cpu", backend="torch",
                           precision="fp32")
    encoded = io.BytesIO()
    Image.new("RGB", (40, 30), "blue").save(encoded, "PNG")
    async with ClassifierEngine(config) as engine:
        for _ in range(3):
            assert (await engine.classify_image(Image.new("RGB", (40, 30), "red"))).label
        for _ in range(3):
            scores = await engine.classify_bytes([encoded.getvalue()] * 2)
            assert all(isinstance(score, Score) for score in scores)
        with pytest.raises(Overloaded, match="queue is full"):
            await engine.classify_bytes([encoded.getvalue()] * 3)

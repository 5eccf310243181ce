"""The duplicate cache: the same bytes are answered without a second forward pass."""

from __future__ import annotations

import threading

from tests.integration.test_animations import red_app
from tests.support import images


def _metric(engine, result: str) -> float:
    # The engine was built by the test, with its own metrics registry.
    value = engine.metrics.registry.get_sample_value(
        "safegen_result_cache_total", {"result": result}
    )
    assert value is not None, f"no safegen_result_cache_total series for result={result}"
    return value


def _model_images(engine) -> int:
    return sum(engine.red_backend.batches[2:])  # after the two warm-up passes


async def test_repeats_are_answered_from_the_cache(tiny_vit_dir):
    a, b = images.png(1), images.png(2)
    async with red_app(tiny_vit_dir, result_cache_size=10) as (client, engine):
        first = await client.post("/v1/classify",
                                  files=[("files", ("a", a)), ("files", ("b", b))])
        again = await client.post("/v1/classify",
                                  files=[("files", ("b2", b)), ("files", ("a2", a))])
        await client.post("/v1/classify", files=[("files", ("a3", a))])
    assert _model_images(engine) == 2  # the later requests reached no model
    one, two = first.json()["results"]
    assert again.json()["results"][0]["scores"] == two["scores"]
    assert again.json()["results"][1]["scores"] == one["scores"]
    assert again.json()["results"][0]["filename"] == "b2"
    assert _metric(engine, "hit") == 3
    assert _metric(engine, "miss") == 2


async def test_size_zero_turns_it_off(tiny_vit_dir):
    data = images.png(3)
    async with red_app(tiny_vit_dir, result_cache_size=0) as (client, engine):
        for _ in range(3):
            await client.post("/v1/classify", files=[("files", ("a", data))])
    assert _model_images(engine) == 3
    assert _metric(engine, "hit") == 0


async def test_bounded_least_recently_used_first_out(tiny_vit_dir):
    a, b, c = (images.png(i) for i in range(3))
    async with red_app(tiny_vit_dir, result_cache_size=2) as (client, engine):
        for data in (a, b, a, c, a, b):  # c pushes out b (a was used more recently)
            await client.post("/v1/classify", files=[("files", ("x", data))])
    assert _model_images(engine) == 4  # a, b, c, then b again



async def test_decoding_runs_on_the_decode_threads(tiny_vit_dir, monkeypatch):
    """SAFEGEN_DECODE_THREADS threads decode (and look up the cache), never the loop's default
    pool, which other work shares."""
    async with red_app(tiny_vit_dir, result_cache_size=10, decode_threads=1) as (client, engine):
        threads: list[str] = []
        decode = engine._decode

        def recording(data: bytes):
            threads.append(threading.current_thread().name)
            return decode(data)

        monkeypatch.setattr(engine, "_decode", recording)
        response = await client.post("/v1/classify", files=[
            ("files", (str(i), images.png(i))) for i in range(3)])
    assert response.status_code == 200, response.text
    assert threads == ["safegen-decode_0"] * 3

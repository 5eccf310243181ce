"""Rate limiting against real storage: in-memory, a real Redis shared by limiters and by two
uvicorn processes, and Redis killed mid-run under both failure policies."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
import textwrap
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI, Response

from safegen.api.errors import install_error_handlers
from safegen.api.ratelimit import RateLimitDecision, RateLimiter, headers
from safegen.metrics import Metrics
from safegen.setting_values import parse_limit, parse_route_limits
from safegen.settings import Settings
from tests.support.redis_server import RedisServer
from tests.support.uvicorn_process import uvicorn_process

APP_SOURCE = textwrap.dedent(
    """
    import os

    from fastapi import FastAPI
    from fastapi.responses import JSONResponse

    from safegen.api.ratelimit import RateLimiter, headers


    def create():
        app = FastAPI()
        limiter = RateLimiter(os.environ["LIMIT"], storage_uri=os.environ["STORAGE"])

        @app.get("/hit")
        async def hit(cost: int = 1):
            decision = await limiter.hit("/hit", "shared-client", cost)
            return JSONResponse(
                {"allowed": decision.allowed, "pid": os.getpid()},
                status_code=decision.status_code, headers=headers(decision),
            )

        return app
    """
)




@pytest.fixture
async def memory_limiter() -> AsyncIterator[RateLimiter]:
    limiter = RateLimiter("3/second", {"/generate": "10/minute"})
    yield limiter
    await limiter.close()


async def test_memory_is_the_default_and_limit_resets(memory_limiter: RateLimiter) -> None:
    decisions = [await memory_limiter.hit("/v1/classify", "key-a") for _ in range(4)]
    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert [d.remaining for d in decisions[:3]] == [2, 1, 0]
    refused = decisions[3]
    assert refused.status_code == 429
    assert refused.reason == "limited"
    assert refused.retry_after_s == 1
    assert "3 per 1 second" in refused.message
    # Another identity has its own budget.
    assert (await memory_limiter.hit("/v1/classify", "key-b")).allowed
    await asyncio.sleep(max(0.0, refused.reset_epoch - time.time()) + 0.05)
    assert (await memory_limiter.hit("/v1/classify", "key-a")).allowed


async def test_cost_is_the_number_of_images(memory_limiter: RateLimiter) -> None:
    first = await memory_limiter.hit("/generate", "key-a", cost=7)
    assert first.allowed
    assert (first.limit, first.remaining) == (10, 3)
    refused = await memory_limiter.hit("/generate", "key-a", cost=4)
    assert not refused.allowed
    assert "costs 4" in refused.message
    # A refused request takes nothing: the 3 units left are still there.
    assert (await memory_limiter.hit("/generate", "key-a", cost=3)).allowed
    assert not (await memory_limiter.hit("/generate", "key-a", cost=1)).allowed


async def test_cost_above_the_whole_limit_is_refused_clearly(
    memory_limiter: RateLimiter,
) -> None:
    decision = await memory_limiter.hit("/generate", "key-c", cost=100)
    assert not decision.allowed
    assert decision.reason == "cost_exceeds_limit"
    assert decision.status_code == 429
    assert "costs 100" in decision.message
    assert "10 per 1 minute" in decision.message
    # Retrying cannot help, so no Retry-After; and nothing was taken.
    assert headers(decision) == {"X-RateLimit-Limit": "10"}
    assert (await memory_limiter.hit("/generate", "key-c", cost=10)).allowed
    with pytest.raises(ValueError, match="^cost must be at least 1$"):
        await memory_limiter.hit("/generate", "key-c", cost=0)


async def test_a_test_takes_nothing_and_costs_one_by_default(memory_limiter: RateLimiter) -> None:
    # test() is the check made before a body is read: asking twice takes nothing.
    for _ in range(2):
        probe = await memory_limiter.test("/v1/classify", "key-t")
        assert (probe.allowed, probe.limit, probe.remaining) == (True, 3, 3)
    await memory_limiter.hit("/v1/classify", "key-t", cost=2)
    assert (await memory_limiter.test("/v1/classify", "key-t")).allowed
    over = await memory_limiter.test("/v1/classify", "key-t", cost=2)
    assert (over.allowed, over.reason, over.remaining) == (False, "limited", 1)
    assert over.message.startswith("rate limit of 3 per 1 second exceeded (this request costs 2, ")


@pytest.mark.parametrize("fail_open", [True, False])
async def test_a_test_against_unreachable_storage(fail_open: bool) -> None:
    # Failing open, the test lets the request on to its charge, which reports the failure once;
    # failing closed, the test itself refuses with 503 and reports it.
    policies: list[str] = []
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        limiter = RateLimiter(
            "5/minute", storage_uri=f"redis://127.0.0.1:{unused.getsockname()[1]}/0",
            fail_open=fail_open, on_storage_error=policies.append, storage_timeout_s=5,
        )
        try:
            decision = await limiter.test("/v1/classify", "key-a")
        finally:
            await limiter.close()
    assert decision.reason == "storage_unavailable"
    if fail_open:
        assert (decision.allowed, decision.limit, policies) == (True, 5, [])
        assert headers(decision) == {}
    else:
        assert (decision.status_code, policies) == (503, ["fail_closed"])
        assert headers(decision) == {"Retry-After": "5"}


async def test_headers(memory_limiter: RateLimiter) -> None:
    allowed = await memory_limiter.hit("/generate", "key-h", cost=2)
    got = headers(allowed)
    assert got["X-RateLimit-Limit"] == "10"
    assert got["X-RateLimit-Remaining"] == "8"
    assert 0 < int(got["X-RateLimit-Reset"]) - time.time() <= 61
    assert "Retry-After" not in got
    await memory_limiter.hit("/generate", "key-h", cost=8)
    refused = headers(await memory_limiter.hit("/generate", "key-h"))
    assert refused["X-RateLimit-Remaining"] == "0"
    assert 1 <= int(refused["Retry-After"]) <= 60


async def test_decisions_through_a_fastapi_app(memory_limiter: RateLimiter) -> None:
    app = FastAPI()
    install_error_handlers(app)

    @app.post("/generate")
    async def generate(response: Response, images: int = 1) -> dict[str, bool]:
        decision = await memory_limiter.hit("/generate", "key-app", cost=images)
        if not decision.allowed:
            raise decision.http_exception()
        response.headers.update(headers(decision))
        return {"ok": True}

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        ok = await client.post("/generate", params={"images": 9})
        limited = await client.post("/generate", params={"images": 2})
        too_many = await client.post("/generate", params={"images": 11})
    assert ok.status_code == 200
    assert ok.headers["x-ratelimit-remaining"] == "1"
    assert limited.status_code == 429
    assert limited.json()["error"]["code"] == "rate_limited"
    # The message tells the client the limit, the cost, what is left and when to come back.
    retry_after = limited.headers["retry-after"]
    assert limited.json()["error"]["message"] == (
        f"rate limit of 10 per 1 minute exceeded (this request costs 2, 1 left); "
        f"retry after {retry_after} s"
    )
    assert limited.headers["x-ratelimit-limit"] == "10"
    assert int(limited.headers["retry-after"]) >= 1
    assert too_many.status_code == 429
    assert too_many.json()["error"]["code"] == "rate_limit_cost_too_high"
    assert too_many.json()["error"]["message"] == (
        "this request costs 11 (one per image) but the rate limit allows at most 10 per 1 minute; "
        "send fewer images per request"
    )
    assert "retry-after" not in too_many.headers


def test_limit_parsing() -> None:
    assert parse_limit("10 per second").amount == 10
    for bad in ("abc", "0/second", "1/second;5/minute"):
        with pytest.raises(ValueError, match="rate limit"):
            parse_limit(bad)
    assert parse_route_limits("/v1/classify=600/minute, /generate=30/minute") == {
        "/v1/classify": "600/minute",
        "/generate": "30/minute",
    }
    with pytest.raises(ValueError, match="route=limit"):
        parse_route_limits("/generate")
    with pytest.raises(ValueError, match="rate limit"):
        parse_route_limits({"/generate": "lots"})
    with pytest.raises(ValueError, match="memory:// or redis://"):
        RateLimiter("1/second", storage_uri="memcached://127.0.0.1:11211")


async def test_two_limiters_share_one_redis_budget(redis_server: RedisServer) -> None:
    one = RateLimiter("5/minute", storage_uri=redis_server.url)
    two = RateLimiter("5/minute", storage_uri=redis_server.url)
    try:
        results = []
        for i in range(8):
            limiter = one if i % 2 == 0 else two
            results.append((await limiter.hit("/v1/classify", "key-shared")).allowed)
        assert results == [True] * 5 + [False] * 3
        assert (await two.hit("/v1/classify", "key-other", cost=5)).allowed
        assert await one.check()
    finally:
        await one.close()
        await two.close()


def test_two_processes_share_one_redis_budget(redis_server: RedisServer, tmp_path: Path) -> None:
    (tmp_path / "ratelimit_app.py").write_text(APP_SOURCE)
    env = {"LIMIT": "6/minute", "STORAGE": redis_server.url}
    with (
        uvicorn_process(tmp_path, "ratelimit_app:create", env) as (url_a, _, _),
        uvicorn_process(tmp_path, "ratelimit_app:create", env) as (url_b, _, _),
    ):
        pids, statuses = set(), []
        for i in range(5):
            response = httpx.get(f"{(url_a, url_b)[i % 2]}/hit", params={"cost": 2}, timeout=10)
            statuses.append(response.status_code)
            pids.add(response.json()["pid"])
        assert len(pids) == 2
        assert statuses == [200, 200, 200, 429, 429]
        assert response.headers["x-ratelimit-remaining"] == "0"
        assert int(response.headers["retry-after"]) >= 1


@pytest.mark.parametrize("fail_open", [True, False])
async def test_redis_killed_mid_run(
    redis_server: RedisServer, fail_open: bool, caplog: pytest.LogCaptureFixture
) -> None:
    policies: list[str] = []
    limiter = RateLimiter(
        "100/minute", storage_uri=redis_server.url, fail_open=fail_open,
        on_storage_error=policies.append, storage_timeout_s=0.3,
    )
    try:
        assert (await limiter.hit("/generate", "key-a", cost=10)).remaining == 90
        redis_server.stop()
        outcomes: list[RateLimitDecision] = []
        with caplog.at_level(logging.WARNING, logger="safegen.api.ratelimit"):
            for _ in range(3):
                started = time.monotonic()
                outcomes.append(await limiter.hit("/generate", "key-a", cost=10))
                assert time.monotonic() - started < 1.5  # never hangs
        policy = "fail_open" if fail_open else "fail_closed"
        assert policies == [policy] * 3
        assert all(d.reason == "storage_unavailable" for d in outcomes)
        assert all(d.allowed is fail_open for d in outcomes)
        if fail_open:
            assert headers(outcomes[0]) == {}
        else:
            assert outcomes[0].status_code == 503
            assert outcomes[0].code == "rate_limit_unavailable"
            assert headers(outcomes[0]) == {"Retry-After": "5"}
            assert outcomes[0].message == "rate limiting is temporarily unavailable; retry later"
        # One warning for the burst (the rest are throttled), naming the policy, not the URI.
        warnings = [r.getMessage() for r in caplog.records]
        assert len(warnings) == 1
        # The exception's type names the cause (a connection error), never its text.
        assert re.fullmatch(rf"rate-limit storage unreachable \(\w+Error\); applying {policy} "
                            r"\(0 similar warnings suppressed\)", warnings[0]), warnings[0]
        assert str(redis_server.port) not in warnings[0]
        assert not await limiter.check()
        # Redis back (empty: no persistence): the limiter recovers on its own.
        redis_server.start()
        recovered = await limiter.hit("/generate", "key-a", cost=10)
        assert recovered.allowed
        assert recovered.reason == "ok"
        assert recovered.remaining == 90
    finally:
        await limiter.close()


@contextlib.asynccontextmanager
async def slow_proxy(port: int, delay_s: float) -> AsyncIterator[int]:
    """A TCP proxy to ``127.0.0.1:port`` that holds every answer ``delay_s``; yields its port."""
    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, hold: float) -> None:
        try:
            while data := await reader.read(65536):
                await asyncio.sleep(hold)
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", port)
        await asyncio.gather(pipe(reader, upstream_writer, 0.0),
                             pipe(upstream_reader, writer, delay_s))

    server = await asyncio.start_server(relay, "127.0.0.1", 0)
    async with server:
        yield server.sockets[0].getsockname()[1]


async def test_a_slow_storage_answering_within_its_timeout_is_not_cut_off(
    redis_server: RedisServer,
) -> None:
    # Each answer takes a tenth of the socket timeout: slow but healthy. A first decision takes
    # about nine round trips (connection set-up, scripts), so the limiter's own deadline must
    # allow several socket timeouts' worth of them, not a fraction of one.
    async with slow_proxy(redis_server.port, 0.1) as port:
        limiter = RateLimiter("5/minute", storage_uri=f"redis://127.0.0.1:{port}/0",
                              fail_open=False, storage_timeout_s=1.0)
        try:
            decision = await limiter.hit("/v1/classify", "key-slow")
        finally:
            await limiter.close()
    assert (decision.allowed, decision.reason, decision.remaining) == (True, "ok", 4)


async def test_the_storage_timeout_setting_reaches_the_limiter(redis_server: RedisServer) -> None:
    # Answers held 0.6 s: healthy under SAFEGEN_RATE_LIMIT_STORAGE_TIMEOUT_S=4, a failure under
    # the 0.5 s default, so a limiter built without the setting refuses (fails closed).
    async with slow_proxy(redis_server.port, 0.6) as port:
        settings = Settings(rate_limit="5/minute", rate_limit_fail_open=False,
                            rate_limit_storage=f"redis://127.0.0.1:{port}/0",
                            rate_limit_storage_timeout_s=4)
        limiter = RateLimiter.from_settings(settings, Metrics())
        assert limiter is not None
        try:
            decision = await limiter.hit("/v1/classify", "key-slow")
        finally:
            await limiter.close()
    assert (decision.allowed, decision.reason, decision.remaining) == (True, "ok", 4)


async def test_unresponsive_redis_is_bounded_by_the_timeout() -> None:
    # A socket that accepts connections but never answers: the worst case, a hung Redis.
    with socket.socket() as black_hole:
        black_hole.bind(("127.0.0.1", 0))
        black_hole.listen(16)
        port = black_hole.getsockname()[1]
        limiter = RateLimiter(
            "5/minute", storage_uri=f"redis://127.0.0.1:{port}/0", fail_open=False,
            storage_timeout_s=0.2,
        )
        try:
            started = time.monotonic()
            decision = await limiter.hit("/v1/classify", "key-a")
            elapsed = time.monotonic() - started
        finally:
            await limiter.close()
    assert decision.status_code == 503
    assert elapsed < 1.0


async def test_readiness_check_of_a_hung_storage_answers_false_within_its_deadline() -> None:
    with socket.socket() as black_hole:
        black_hole.bind(("127.0.0.1", 0))
        black_hole.listen(16)
        port = black_hole.getsockname()[1]
        limiter = RateLimiter("5/minute", storage_uri=f"redis://127.0.0.1:{port}/0",
                              storage_timeout_s=0.2)
        try:
            # The guard is 25x the deadline: it only catches a check that never returns.
            assert await asyncio.wait_for(limiter.check(), 15) is False
        finally:
            await limiter.close()


def test_storage_warnings_are_throttled_and_count_what_they_held_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from safegen.api.ratelimit import _ThrottledWarning

    now = [1000.0]
    warn = _ThrottledWarning(interval_s=30, clock=lambda: now[0])
    failure = ConnectionError("redis://user:secret@cache.internal:6379 refused")
    with caplog.at_level(logging.WARNING, logger="safegen.api.ratelimit"):
        warn(failure, "fail_open")
        for now[0] in (1010.0, 1020.0, 1029.0):
            warn(failure, "fail_open")
        now[0] = 1031.0
        warn(failure, "fail_closed")
        now[0] = 1040.0
        warn(failure, "fail_open")
        now[0] = 1061.0  # exactly one interval after the last warning: due again
        warn(failure, "fail_open")
    template = ("rate-limit storage unreachable (ConnectionError); applying {} "
                "({} similar warnings suppressed)")
    assert [r.getMessage() for r in caplog.records] == [
        template.format("fail_open", 0), template.format("fail_closed", 3),
        template.format("fail_open", 1),
    ]

"""Request-body limit: a real uvicorn process for the wire behaviour (declared and chunked bodies),
and in-process ASGI apps for what the app does with the error."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import socket
import textwrap
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, File, Request, UploadFile
from fastapi.responses import JSONResponse, StreamingResponse

from safegen.api.body_limit import BodySizeLimitMiddleware, BodyTooLarge
from tests.support.uvicorn_process import uvicorn_process

LIMIT = 64 * 1024

APP_SOURCE = textwrap.dedent(
    f"""
    import hashlib

    from fastapi import FastAPI, Request

    from safegen.api.body_limit import BodySizeLimitMiddleware, BodyTooLarge


    def create():
        app = FastAPI()
        app.add_middleware(BodySizeLimitMiddleware, max_bytes={LIMIT}, paths_prefixes=["/v1/"])

        @app.post("/v1/upload")
        async def upload(request: Request):
            body = await request.body()
            return {{"size": len(body), "sha256": hashlib.sha256(body).hexdigest()}}

        @app.post("/unlimited")
        async def unlimited(request: Request):
            return {{"size": len(await request.body())}}

        @app.get("/healthz")
        async def healthz():
            return {{"ok": True}}

        return app
    """
)




@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int, list[str]]]:
    app_dir = tmp_path_factory.mktemp("body_limit_app")
    (app_dir / "body_limit_app.py").write_text(APP_SOURCE)
    with uvicorn_process(app_dir, "body_limit_app:create") as running:
        yield running


def raw_exchange(port: int, request: bytes, timeout: float = 5.0) -> tuple[int, dict, bytes]:
    """Send ``request`` as is, then read until the server closes; parse the response."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {
        name.strip().lower(): value.strip()
        for name, _, value in (line.partition(":") for line in header_lines)
    }
    return int(status_line.split()[1]), headers, body


def assert_too_large(status: int, headers: dict, body: bytes) -> None:
    assert status == 413
    assert headers["connection"] == "close"
    assert json.loads(body) == {
        "error": {
            "code": "too_large",
            "message": f"request body exceeds SAFEGEN_MAX_REQUEST_BYTES ({LIMIT} bytes)",
        }
    }


def test_declared_length_over_limit_is_refused_without_reading(server: tuple) -> None:
    _, port, _ = server
    # Headers only: the 10 MB body is never sent, so a 413 proves nothing waited for it.
    request = (
        b"POST /v1/upload HTTP/1.1\r\nHost: test\r\nContent-Type: application/octet-stream\r\n"
        b"Content-Length: 10485760\r\n\r\n"
    )
    started = time.monotonic()
    assert_too_large(*raw_exchange(port, request))
    assert time.monotonic() - started < 2


def test_chunked_upload_over_limit_is_stopped_mid_stream(server: tuple) -> None:
    _, port, lines = server
    chunk = b"x" * 8192
    # LIMIT + 1 byte in chunks, and no terminating zero-size chunk: the client has not finished,
    # so the only way to get an answer is the middleware aborting before the body is complete.
    parts = [b"POST /v1/upload HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n"]
    for _ in range(LIMIT // len(chunk)):
        parts.append(b"%x\r\n%s\r\n" % (len(chunk), chunk))
    parts.append(b"1\r\ny\r\n")
    assert_too_large(*raw_exchange(port, b"".join(parts)))
    assert not any("Traceback" in line for line in lines)


def test_server_stays_healthy_and_bodies_under_the_limit_pass_intact(server: tuple) -> None:
    url, _, lines = server
    payload = os.urandom(LIMIT)  # exactly at the limit
    expected = {"size": LIMIT, "sha256": hashlib.sha256(payload).hexdigest()}

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(payload), 5000):
            yield payload[start : start + 5000]

    with httpx.Client(base_url=url, timeout=10) as client:
        assert client.get("/healthz").status_code == 200
        declared = client.post("/v1/upload", content=payload)
        assert declared.status_code == 200
        assert declared.json() == expected
        streamed = client.post("/v1/upload", content=chunks())
        assert streamed.status_code == 200
        assert streamed.json() == expected
        # Outside the configured prefixes there is no limit.
        big = client.post("/unlimited", content=b"z" * (LIMIT * 4))
        assert big.json() == {"size": LIMIT * 4}
        assert client.post("/v1/upload", content=b"z" * (LIMIT + 1)).status_code == 413
        assert client.get("/healthz").status_code == 200
    assert not any("Traceback" in line for line in lines)


def make_app(max_bytes: int) -> FastAPI:
    app = FastAPI()
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=max_bytes)
    app.state.seen = []

    @app.post("/form")
    async def form(file: UploadFile = File(...)) -> dict[str, int]:
        return {"size": len(await file.read())}

    @app.post("/swallow")
    async def swallow(request: Request) -> JSONResponse:
        try:
            await request.body()
        except Exception:  # an app that turns every error into its own 500
            return JSONResponse({"error": "internal"}, status_code=500)
        return JSONResponse({"ok": True})

    @app.post("/stream-first")
    async def stream_first(request: Request) -> StreamingResponse:
        async def echo() -> AsyncIterator[bytes]:
            async for part in request.stream():
                app.state.seen.append(len(part))
                yield b"."

        return StreamingResponse(echo())

    return app


async def slow_body(total: int, size: int = 4096) -> AsyncIterator[bytes]:
    sent = 0
    while sent < total:
        part = b"a" * min(size, total - sent)
        sent += len(part)
        yield part


@pytest.mark.parametrize("path", ["/form", "/swallow"])
async def test_app_error_handling_cannot_replace_the_413(path: str) -> None:
    transport = httpx.ASGITransport(app=make_app(10_000))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        if path == "/form":
            boundary = "b0undary"
            head = (
                f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.bin"'
                "\r\nContent-Type: application/octet-stream\r\n\r\n"
            ).encode()

            async def body() -> AsyncIterator[bytes]:
                yield head
                async for part in slow_body(20_000):
                    yield part

            response = await client.post(
                path, content=body(),
                headers={"content-type": f"multipart/form-data; boundary={boundary}"},
            )
        else:
            response = await client.post(path, content=slow_body(20_000))
    # FastAPI turns form-parsing errors into 400, the other app into 500: both are replaced.
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "too_large"


async def test_streaming_response_listening_for_disconnect_still_gets_413() -> None:
    # Starlette's StreamingResponse drains receive() while it waits for a disconnect: the limit
    # trips before the response starts, so the 413 can still be sent.
    app = make_app(10_000)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        response = await client.post("/stream-first", content=slow_body(50_000))
    assert response.status_code == 413


async def test_response_already_started_is_cut_off_not_doubled() -> None:
    received: list[int] = []

    async def app_that_answers_first(scope: dict, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        while True:
            message = await receive()
            received.append(len(message.get("body", b"")))
            if not message.get("more_body"):
                break
        await send({"type": "http.response.body", "body": b"done"})

    chunks = [{"type": "http.request", "body": b"a" * 4000, "more_body": True}] * 10
    sent: list[dict] = []

    async def receive() -> dict:
        return chunks.pop(0)

    async def send(message: dict) -> None:
        sent.append(message)

    middleware = BodySizeLimitMiddleware(app_that_answers_first, max_bytes=10_000)
    scope = {"type": "http", "path": "/", "headers": []}
    with pytest.raises(BodyTooLarge):
        await middleware(scope, receive, send)
    # One response start (the app's 200), no 413 after it, and the body reads stopped at the
    # chunk that crossed the limit.
    assert [m["type"] for m in sent] == ["http.response.start"]
    assert sum(received) <= 8000


async def test_an_app_that_swallows_the_overflow_after_answering_is_cut_off_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def app_that_answers_then_ignores_it(scope: dict, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        with contextlib.suppress(BodyTooLarge):
            while (await receive()).get("more_body"):
                pass
        await send({"type": "http.response.body", "body": b"done"})

    middleware = BodySizeLimitMiddleware(app_that_answers_then_ignores_it, max_bytes=1000)
    with caplog.at_level(logging.INFO, logger="safegen.api.body_limit"):
        sent, _ = await call_middleware(middleware, [], [b"a" * 600] * 3)
    # The app's start only: neither a 413 after it nor the rest of the app's response.
    assert [(m["type"], m.get("status")) for m in sent] == [("http.response.start", 200)]
    assert [r.getMessage() for r in caplog.records] == [
        "request body passed the limit after the response started; cut off"]


async def test_with_the_service_error_handlers_and_reject_hook() -> None:
    from safegen.api.errors import install_error_handlers

    rejected: list[int] = []
    app = FastAPI()
    install_error_handlers(app)  # maps TooLarge to 413 and Exception to 500 in its own format
    app.add_middleware(
        BodySizeLimitMiddleware, max_bytes=1000, on_reject=lambda: rejected.append(1)
    )

    @app.post("/echo")
    async def echo(request: Request) -> dict[str, int]:
        return {"size": len(await request.body())}

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        ok = await client.post("/echo", content=slow_body(1000, size=300))
        streamed = await client.post("/echo", content=slow_body(5000, size=300))
        declared = await client.post("/echo", content=b"b" * 1001)
    assert ok.json() == {"size": 1000}
    for response in (streamed, declared):
        assert response.status_code == 413
        assert response.json()["error"]["code"] == "too_large"
    assert len(rejected) == 2


def test_negative_limit_is_refused() -> None:
    with pytest.raises(ValueError, match="max_bytes"):
        BodySizeLimitMiddleware(FastAPI(), max_bytes=-1)


def expected_413(limit: int) -> tuple[dict, bytes]:
    """The README's 413: JSON naming the setting and the limit, and a closed connection."""
    body = json.dumps({"error": {
        "code": "too_large",
        "message": f"request body exceeds SAFEGEN_MAX_REQUEST_BYTES ({limit} bytes)",
    }}).encode()
    headers = {"content-type": "application/json", "content-length": str(len(body)),
               "connection": "close"}
    return headers, body


async def call_middleware(
    middleware: BodySizeLimitMiddleware, headers: list[tuple[bytes, bytes]], chunks: list[bytes]
) -> tuple[list[dict], list[bytes]]:
    """Run one request through ``middleware``; returns what it sent and the chunks left unread."""
    pending = list(chunks)
    sent: list[dict] = []

    async def receive() -> dict:
        # Reading past the last chunk would wait for a disconnect that never comes.
        assert pending, "read past the end of the body"
        message = {"type": "http.request", "body": pending.pop(0)}
        if pending:
            message["more_body"] = True  # the last message leaves it out: ASGI's default is False
        return message

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/", "headers": headers}
    await middleware(scope, receive, send)
    return sent, pending


def response_of(sent: list[dict]) -> tuple[int, dict, bytes]:
    start, body = sent
    headers = {name.decode(): value.decode() for name, value in start["headers"]}
    return start["status"], headers, body["body"]


@pytest.mark.parametrize("declared", [1600, 2000])
async def test_a_declared_body_within_the_drain_allowance_is_read_then_refused_exactly(
    declared: int,
) -> None:
    called: list[str] = []

    async def app(scope: dict, receive: Any, send: Any) -> None:
        called.append(scope["path"])

    middleware = BodySizeLimitMiddleware(app, max_bytes=1000)
    # Over the limit, up to twice the limit (inclusive), so read to the end first (the client
    # then reads the 413 instead of a connection reset).
    sent, unread = await call_middleware(
        middleware, [(b"content-length", str(declared).encode())], [b"a" * (declared // 4)] * 4
    )
    assert unread == []
    assert called == []
    headers, body = expected_413(1000)
    assert response_of(sent) == (413, headers, body)


async def test_a_declared_body_far_over_the_limit_is_refused_unread() -> None:
    middleware = BodySizeLimitMiddleware(FastAPI(), max_bytes=1000)
    sent, unread = await call_middleware(
        middleware, [(b"content-length", b"2001")], [b"a" * 667] * 3
    )
    assert len(unread) == 3  # more than twice the limit: not one byte read
    assert response_of(sent) == (413, *expected_413(1000))


async def test_a_streamed_body_over_the_limit_gets_the_exact_413() -> None:
    seen: list[int] = []

    async def app(scope: dict, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            seen.append(len(message["body"]))
            if not message.get("more_body"):
                break

    middleware = BodySizeLimitMiddleware(app, max_bytes=1000)
    sent, unread = await call_middleware(middleware, [], [b"a" * 400] * 5)
    assert seen == [400, 400]  # the third chunk crossed the limit and was never handed over
    assert len(unread) == 2
    assert response_of(sent) == (413, *expected_413(1000))


@pytest.mark.parametrize(("path", "checked"), [("/v1/classify", True), ("/healthz", False)])
async def test_only_the_configured_paths_are_limited(path: str, checked: bool) -> None:
    async def app(scope: dict, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    middleware = BodySizeLimitMiddleware(app, max_bytes=10, paths_prefixes=["/v1/"])
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b"x" * 11, "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    await middleware({"type": "http", "path": path, "headers": []}, receive, send)
    assert sent[0]["status"] == (413 if checked else 204)


async def test_a_client_that_never_finishes_its_refused_body_is_cut_off(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from safegen.api import body_limit

    monkeypatch.setattr(body_limit, "DRAIN_TIMEOUT_S", 0.05)
    sent: list[dict] = []

    async def endless() -> dict:
        await asyncio.sleep(0)
        return {"type": "http.request", "body": b"a" * 10, "more_body": True}

    async def send(message: dict) -> None:
        sent.append(message)

    middleware = BodySizeLimitMiddleware(FastAPI(), max_bytes=1000)
    scope = {"type": "http", "path": "/", "headers": [(b"content-length", b"1500")]}
    with caplog.at_level(logging.INFO, logger="safegen.api.body_limit"):
        await asyncio.wait_for(middleware(scope, endless, send), 10)  # guard: a hang fails
    assert response_of(sent) == (413, *expected_413(1000))
    assert [r.getMessage() for r in caplog.records] == [
        "client kept sending a refused body for 0 s; cut off"
    ]

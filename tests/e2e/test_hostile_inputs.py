"""Hostile input and shared limits against real ``safegen serve`` processes."""

from __future__ import annotations

import socket
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from tests.support import images
from tests.support.app_client import AUTH

MAX_REQUEST = 2_000_000

HOSTILE = {
    "decompression-bomb": images.decompression_bomb_png(12_000),
    "huge-declared-png": images.png_with_declared_size(100_000, 100_000),
    "truncated-jpeg": images.truncated_jpeg(),
    "polyglot": images.polyglot(),
    "garbage": bytes(range(256)) * 4,
    "empty": b"",
    "bmp": images.encode(images.photo_like(0, (32, 32)), "BMP"),
}
EXPECTED_CODE = {
    "decompression-bomb": "too_large", "huge-declared-png": "too_large",
    "truncated-jpeg": "invalid_image", "polyglot": "invalid_image", "garbage": "invalid_image",
    "empty": "invalid_image", "bmp": "unsupported_format",
}


@pytest.fixture
def hostile_server(server_process, tiny_vit_dir):
    return server_process({
        "SAFEGEN_NSFW_MODEL": str(tiny_vit_dir),
        "SAFEGEN_MAX_REQUEST_BYTES": str(MAX_REQUEST),
        "SAFEGEN_MAX_IMAGE_BYTES": "1000000",
        "SAFEGEN_MAX_IMAGE_PIXELS": "20000000",
        "SAFEGEN_MAX_FILES_PER_REQUEST": "4",
    })


def test_each_hostile_file_gets_its_named_error_and_good_images_are_kept(hostile_server):
    url = f"{hostile_server.url}/v1/classify"
    for name, data in HOSTILE.items():
        files = [("files", (name, data)), ("files", ("good.jpg", images.jpeg(1, (256, 256))))]
        response = httpx.post(url, files=files, headers=AUTH, timeout=30)
        assert response.status_code == 200, (name, response.text)
        bad, good = response.json()["results"]
        assert bad["error"]["code"] == EXPECTED_CODE[name], (name, bad)
        assert "nsfw_score" in good
    assert httpx.get(f"{hostile_server.url}/readyz").status_code == 200


def test_request_level_limits(hostile_server):
    url = f"{hostile_server.url}/v1/classify"
    too_many = httpx.post(url, headers=AUTH, timeout=30,
                          files=[("files", (f"{i}.png", images.png(i))) for i in range(5)])
    assert too_many.status_code == 413
    assert "SAFEGEN_MAX_FILES_PER_REQUEST" in too_many.json()["error"]["message"]
    oversized = httpx.post(url, headers=AUTH, timeout=30,
                           files=[("files", ("big.bin", b"\0" * (MAX_REQUEST + 1)))])
    assert oversized.status_code == 413
    assert "SAFEGEN_MAX_REQUEST_BYTES" in oversized.json()["error"]["message"]
    assert _chunked_oversized_upload(hostile_server.url) == 413
    zero = httpx.post(url, headers=AUTH, json={"images": []}, timeout=30)
    assert zero.status_code == 422
    assert httpx.get(f"{hostile_server.url}/readyz").status_code == 200
    log = hostile_server.log()
    assert "Traceback" not in log
    assert "internal_error" not in log


def _chunked_oversized_upload(base_url: str) -> int:
    """Stream a body with no Content-Length that grows past the limit; return the status."""
    def chunks():
        for _ in range(MAX_REQUEST // 65536 + 8):
            yield b"x" * 65536

    try:
        response = httpx.post(
            f"{base_url}/v1/classify", headers={**AUTH, "content-type": "application/json"},
            content=chunks(), timeout=30,
        )
    except (httpx.RemoteProtocolError, httpx.WriteError):
        return 0  # the server may close mid-stream; it must still be healthy afterwards
    return response.status_code


def test_two_processes_share_one_redis_budget(server_process, tiny_vit_dir, redis_server):
    env = {
        "SAFEGEN_NSFW_MODEL": str(tiny_vit_dir),
        "SAFEGEN_RATE_LIMIT": "6/minute",
        "SAFEGEN_RATE_LIMIT_STORAGE": redis_server.url,
    }
    with ThreadPoolExecutor(2) as pool:
        first, second = pool.map(server_process, [env, env])
    body = {"files": [("files", ("a.png", images.png(1)))]}
    statuses = []
    for i in range(8):  # alternate between the two processes
        server = (first, second)[i % 2]
        statuses.append(httpx.post(f"{server.url}/v1/classify", headers=AUTH, timeout=30,
                                   **body).status_code)
    assert statuses == [200] * 6 + [429, 429]


# More than anyio's 40 worker threads and a typical connection cap: a server that parked a stalled
# request in a thread, or counted it against a small concurrency limit, would starve the others.
STALLED_CLIENTS = 48


def _stall(host: str, port: int, index: int) -> socket.socket:
    """A connection that sends half a request and stops: half the header block, or a whole
    authenticated header block and 10 of the 1000 body bytes it announced."""
    sock = socket.create_connection((host, port), timeout=5)
    if index % 2:
        sock.sendall(b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n")
    else:
        head = ("POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n"
                "Content-Type: application/json\r\n"
                f"Authorization: {AUTH['Authorization']}\r\n\r\n")
        sock.sendall(head.encode() + b'{"images": ')
    return sock


def test_stalled_clients_do_not_starve_others(hostile_server):
    """Clients that send half a request and stall must not stop others being served.

    uvicorn has no read timeout for a request in progress (its keep-alive timeout applies only
    between requests), so the stalled connections are not cut off; what can break, and is checked,
    is a server that holds a worker thread or a concurrency slot for each of them."""
    host, port = hostile_server.url.removeprefix("http://").split(":")
    stalled = [_stall(host, int(port), i) for i in range(STALLED_CLIENTS)]
    try:
        response = httpx.post(f"{hostile_server.url}/v1/classify", headers=AUTH, timeout=30,
                              files=[("files", ("a.png", images.png(2)))])
        ready = httpx.get(f"{hostile_server.url}/readyz", timeout=30)
    finally:
        for sock in stalled:
            sock.close()
    assert response.status_code == 200, response.text
    assert 0 <= response.json()["results"][0]["nsfw_score"] <= 1
    assert ready.status_code == 200

"""The edge refuses before it spends: no body is read for a caller without a key or a budget,
bodies are bounded per route, jobs are bounded per client and in total, IPv6 clients share a
budget per network, and decoding is bounded in memory."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Callable
from typing import Any

import pytest

from safegen.app import create_app
from safegen.settings import Settings
from tests.support import images
from tests.support.app_client import (
    AUTH,
    SMALL,
    TEST_KEY,
    generate_settings,
    running_app,
    settings_for,
)
from tests.support.faultserver import FaultServer, Step

OTHER_KEY = "other-key-not-a-secret-987654321"
PNG_B64 = base64.b64encode(images.png(1)).decode()


class CountingReceive:
    """An ASGI ``receive`` that serves ``body`` and counts how often the app asked for it."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.calls = 0

    async def __call__(self) -> dict[str, Any]:
        self.calls += 1
        if self.calls == 1:
            return {"type": "http.request", "body": self.body, "more_body": False}
        await asyncio.Event().wait()  # after the body: wait as a connection does, no disconnect
        raise AssertionError("unreachable")


async def call_raw(app: Any, path: str, body: bytes, headers: dict[str, str],
                   content_type: str = "application/json",
                   client: tuple[str, int] = ("127.0.0.1", 5000)) -> tuple[int, dict, int]:
    """POST through the ASGI app; returns (status, JSON body, times the body was asked for)."""
    receive = CountingReceive(body)
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    raw_headers = [(b"content-type", content_type.encode()),
                   (b"content-length", str(len(body)).encode())]
    raw_headers += [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
        "root_path": "", "headers": raw_headers, "client": client, "server": ("safegen", 80),
        "state": {},
    }
    await app(scope, receive, send)
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    payload = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, json.loads(payload), receive.calls


HUGE_JSON = b"[" + b"{}," * 300_000 + b"{}]"  # ~0.9 MB of tiny objects: costly to parse


@pytest.mark.parametrize("route", ["/generate", "/v1/classify"])
async def test_no_key_no_body_read(tiny_vit_dir, route):
    app = create_app(settings_for(tiny_vit_dir))
    async with running_app(app):
        status, body, reads = await call_raw(app, route, HUGE_JSON, headers={})
    assert (status, body["error"]["code"]) == (401, "unauthorized")
    assert reads == 0


@pytest.mark.parametrize(
    ("route", "content_type", "body"),
    [
        ("/v1/classify", "application/json",
         json.dumps({"images": [PNG_B64]}).encode()),
        ("/v1/classify", "multipart/form-data; boundary=b",
         b"--b\r\nContent-Disposition: form-data; name=\"files\"; filename=\"a.png\"\r\n\r\n"
         + images.png(1) + b"\r\n--b--\r\n"),
        ("/generate", "application/json", json.dumps({"prompt": "x"}).encode()),
    ],
    ids=["classify-json", "classify-multipart", "generate"],
)
async def test_spent_budget_is_refused_before_the_body_is_read(
    tiny_vit_dir, tiny_sd_dir, route, content_type, body
):
    settings = generate_settings(tiny_vit_dir, tiny_sd_dir, rate_limit="1/minute",
                                 rate_limit_routes={})
    app = create_app(settings)
    async with running_app(app) as client:
        spend = ({"images": [PNG_B64]} if route == "/v1/classify"
                 else {"prompt": "x", "response_format": "b64_json", **SMALL})
        first = await client.post(route, json=spend)
        assert first.status_code == 200  # the route's one unit of this minute
        status, answer, reads = await call_raw(app, route, body, AUTH, content_type)
    assert (status, answer["error"]["code"]) == (429, "rate_limited")
    assert reads == 0


async def test_generate_body_has_its_own_small_limit(make_generate_client):
    async with make_generate_client(generate_max_body_bytes=4096) as client:
        response = await client.post("/generate", json={"prompt": "x" * 5000})
        small = await client.post("/generate", json={
            "prompt": "x", "response_format": "b64_json", **SMALL,
        })
    assert response.status_code == 413
    assert response.json()["error"]["field"] == "body"
    assert "SAFEGEN_GENERATE_MAX_BODY_BYTES" in response.json()["error"]["message"]
    assert small.status_code == 200


async def test_generate_validation_errors_keep_their_shape(make_generate_client):
    async with make_generate_client() as client:
        missing = await client.post("/generate", json={"width": 64})
        not_json = await client.post("/generate", content=b"{nope",
                                     headers={"content-type": "application/json"})
    assert missing.status_code == 422
    assert missing.json()["error"]["field"] == "prompt"
    assert not_json.status_code == 422
    assert not_json.json()["error"]["field"] == "body"


def stalled_upload(server: FaultServer) -> dict[str, Any]:
    return {"prompt": "x", "s3_prefix": f"{server.url}/b/1.png", **SMALL}


async def wait_for_requests(server: FaultServer, count: int) -> None:
    while len(server.requests) < count:
        await asyncio.sleep(0.01)  # polls the server's record of arrived uploads


async def test_jobs_are_bounded_per_key_and_in_total(
    tiny_vit_dir, tiny_sd_dir, fault_server: FaultServer
):
    # Uploads that never finish keep their jobs in flight: the key that sent them reaches its
    # own limit, another key is still served, and the service as a whole stays bounded.
    fault_server.script(Step(200, body=b"x" * 1000, trickle_s=0.5))
    settings = generate_settings(
        tiny_vit_dir, tiny_sd_dir, api_keys=[TEST_KEY, OTHER_KEY], max_jobs_per_key=2,
        generator_max_pending=3, upload_attempt_timeout_s=60, upload_deadline_s=60,
        rate_limit="",
    )
    other = {"Authorization": f"Bearer {OTHER_KEY}"}
    app = create_app(settings)
    async with running_app(app) as client:
        stuck = [asyncio.create_task(client.post("/generate", json=stalled_upload(fault_server)))
                 for _ in range(2)]
        await wait_for_requests(fault_server, 2)
        third = await client.post("/generate", json=stalled_upload(fault_server))
        assert third.status_code == 429
        assert third.json()["error"]["code"] == "too_many_jobs"
        assert third.json()["error"]["message"] == (
            "this client has 2 generation jobs in flight, the limit (SAFEGEN_MAX_JOBS_PER_KEY)")
        assert int(third.headers["retry-after"]) >= 1
        stuck.append(asyncio.create_task(
            client.post("/generate", json=stalled_upload(fault_server), headers=other)))
        await wait_for_requests(fault_server, 3)
        full = await client.post("/generate", json={"prompt": "x", **SMALL,
                                                    "response_format": "b64_json"},
                                 headers=other)
        assert full.status_code == 503
        assert full.json()["error"]["message"] == (
            "3 generation jobs are in flight, the limit (SAFEGEN_GENERATOR_MAX_PENDING)")
        assert app.state.generate_service.in_flight == 3
        # The storage recovers: the cut-off answers are retried, every job completes and leaves.
        fault_server.script(Step(200))
        fault_server.release.set()
        done = await asyncio.gather(*stuck)
        assert [r.status_code for r in done] == [200, 200, 200]
        assert app.state.generate_service.in_flight == 0
        # Nothing is kept for a client with no job in flight: one entry per address ever seen
        # would grow without bound on an open service.
        assert not app.state.generate_service._per_client
        again = await client.post("/generate", json={"prompt": "x", **SMALL,
                                                     "response_format": "b64_json"})
        assert again.status_code == 200


async def test_ipv6_clients_share_a_budget_per_64(tiny_vit_dir):
    settings = settings_for(tiny_vit_dir, api_keys=[], no_auth=True, rate_limit="2/minute")
    app = create_app(settings)
    body = json.dumps({"images": [PNG_B64]}).encode()
    async with running_app(app):
        statuses = []
        for host in ("2001:db8:1:2::1", "2001:db8:1:2::ffff", "2001:db8:1:2:abcd::9"):
            status, _, _ = await call_raw(app, "/v1/classify", body, {}, client=(host, 5000))
            statuses.append(status)
        other_network, _, _ = await call_raw(app, "/v1/classify", body, {},
                                             client=("2001:db8:1:3::1", 5000))
    assert statuses == [200, 200, 429]
    assert other_network == 200


async def test_an_image_whose_decode_needs_more_than_the_budget_is_refused_alone(
    make_client: Callable[..., Any],
):
    # 4.9 KB of 1-bit PNG declaring 8000x5000: 40 MP, about 150 MiB to decode and convert.
    bomb = base64.b64encode(images.one_bit_png(8000, 5000)).decode()
    async with make_client(decode_memory_mb=64) as client:
        response = await client.post("/v1/classify", json={"images": [bomb, PNG_B64]})
    assert response.status_code == 200
    first, second = response.json()["results"]
    assert first["error"]["code"] == "too_large"
    assert "SAFEGEN_DECODE_MEMORY_MB" in first["error"]["message"]
    assert 0 <= second["nsfw_score"] <= 1


def test_settings_bound_every_new_limit() -> None:
    for bad in ({"max_jobs_per_key": 0}, {"generate_max_body_bytes": 10},
                {"decode_memory_mb": 1}, {"rate_limit_ipv6_prefix": 129},
                {"upload_deadline_s": 0}, {"dns_timeout_s": 0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            Settings(**bad)  # type: ignore[arg-type]


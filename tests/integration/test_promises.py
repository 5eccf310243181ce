"""Promises the README makes, each held by a test that fails when the promise is broken.

- ``Retry-After`` follows the expected wait: on a 503 from the classifier queue it grows with the
  model time of the images queued ahead; on a 429 it points at the rate-limit window's reset.
- ``Content-MD5`` is added to SigV4 presigned uploads only; ``SAFEGEN_UPLOAD_DEFAULT_HEADERS`` go
  with every upload attempt, retries included.
- The access log holds paths, never query strings (presigned signatures live there).
- The NSFW score and the upload run concurrently in ``/generate``.
- Without authentication the rate limit is kept per client address, and ``X-Forwarded-For`` is
  believed only from ``SAFEGEN_TRUSTED_PROXIES``.
- The default ``/generate`` limit is 60/minute, the other routes' 600/minute (README, Hardening).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import math
import threading
import time
from datetime import datetime, timezone
from typing import Any

import pytest
from PIL import Image

from safegen.app import create_app
from safegen.moderation.base import Score
from tests.integration.test_hardening import call_raw
from tests.support import images
from tests.support.app_client import SMALL, running_app, settings_for
from tests.support.faultserver import FaultServer, Step

JPEG_FILE = [("files", ("a.jpg", images.jpeg(1, (64, 64))))]
PNG_B64 = base64.b64encode(images.png(1)).decode()
SIGNATURE = "SeCrEtSiGnAtUrE0123456789abcdef"


# --- Retry-After on 503: the expected wait of the classifier queue -------------------------------


class GatedModel:
    """Stands in front of the backend's ``predict``: each call waits for ``gate`` (a model that
    has not finished yet), so the images behind it stay queued for as long as the test wants."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.gate = threading.Event()
        self.entered = threading.Event()

    def __call__(self, batch: Any) -> Any:
        self.entered.set()
        self.gate.wait(30)
        return self.real(batch)


class FixedModelTime:
    """The engine's estimate of model time per image, held at ``seconds`` (a model that slow)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def observe(self, images: int, seconds: float) -> None:
        pass


async def _until(condition: Any, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


def _queue_depth(app: Any) -> float:
    value = app.state.metrics.registry.get_sample_value("safegen_queue_depth")
    assert value is not None, "safegen_queue_depth is not exposed"
    return value


async def _refusal_with_queue(
    monkeypatch: pytest.MonkeyPatch, tiny_vit_dir: Any, queued: int, per_image_s: float,
    **overrides: Any,
) -> tuple[Any, int]:
    """A request refused while one image is in a stalled model and ``queued`` wait behind it,
    the model then known to take ``per_image_s`` an image. Returns (response, images ahead)."""
    app = create_app(settings_for(tiny_vit_dir, rate_limit="", max_batch_size=1, **overrides))
    async with running_app(app) as client:
        engine = app.state.classifier
        model = GatedModel(engine.backend.predict)
        monkeypatch.setattr(engine.backend, "predict", model)
        model_time = FixedModelTime(0.0)  # a fast model while the queue fills
        monkeypatch.setattr(engine, "_model_time", model_time)
        waiting = [asyncio.create_task(client.post("/v1/classify", files=JPEG_FILE))]
        try:
            # One image in the model first, then ``queued`` behind it (admitted while it runs).
            await asyncio.get_running_loop().run_in_executor(None, model.entered.wait, 20)
            waiting += [asyncio.create_task(client.post("/v1/classify", files=JPEG_FILE))
                        for _ in range(queued)]
            await _until(lambda: _queue_depth(app) == queued)
            model_time.seconds = per_image_s  # and now a slow one
            refused = await client.post("/v1/classify", files=JPEG_FILE)
        finally:
            model.gate.set()
            served = await asyncio.gather(*waiting)
    assert [r.status_code for r in served] == [200] * (queued + 1)
    return refused, queued


@pytest.mark.parametrize("per_image_s", [0.5, 3.0])
async def test_queue_full_retry_after_is_the_queued_model_time(
    monkeypatch, tiny_vit_dir, per_image_s
):
    refused, ahead = await _refusal_with_queue(
        monkeypatch, tiny_vit_dir, queued=4, per_image_s=per_image_s, max_queue_images=4,
        max_queue_wait_s=3600,
    )
    assert refused.status_code == 503
    assert "SAFEGEN_MAX_QUEUE_IMAGES" in refused.json()["error"]["message"]
    # The queue ahead is the wait: 4 x 0.5 s -> 2 s, 4 x 3 s -> 12 s (a constant would not do).
    assert int(refused.headers["Retry-After"]) == math.ceil(ahead * per_image_s)


@pytest.mark.parametrize("per_image_s", [0.5, 2.0])
async def test_wait_limit_retry_after_grows_with_the_expected_wait(
    monkeypatch, tiny_vit_dir, per_image_s
):
    limit_s = 1.0
    refused, ahead = await _refusal_with_queue(
        monkeypatch, tiny_vit_dir, queued=6, per_image_s=per_image_s, max_queue_images=512,
        max_queue_wait_s=limit_s,
    )
    assert refused.status_code == 503
    assert "SAFEGEN_MAX_QUEUE_WAIT_S" in refused.json()["error"]["message"]
    wait_s = ahead * per_image_s  # 3 s or 12 s of queued model time
    # Retrying helps once the queued work falls under the limit, and not later than when it is
    # all done: 6 x 0.5 s gives 2-3 s, 6 x 2 s gives 11-12 s.
    assert math.ceil(wait_s - limit_s) <= int(refused.headers["Retry-After"]) <= math.ceil(wait_s)


# --- Retry-After on 429: the rate-limit window's reset -------------------------------------------


@pytest.mark.parametrize(("limit", "window_s"), [("1/minute", 60), ("1/hour", 3600)])
async def test_rate_limit_retry_after_points_at_the_reset(tiny_vit_dir, limit, window_s):
    app = create_app(settings_for(tiny_vit_dir, rate_limit=limit))
    body = {"json": {"images": [PNG_B64]}}
    async with running_app(app) as client:
        first = await client.post("/v1/classify", **body)
        refused = await client.post("/v1/classify", **body)
    assert first.status_code == 200
    assert refused.status_code == 429
    retry_after = int(refused.headers["Retry-After"])
    # The only unit was taken a moment ago: it comes back one window after it was taken.
    assert window_s - 30 <= retry_after <= window_s, retry_after
    reset = int(refused.headers["X-RateLimit-Reset"])
    assert abs(reset - (time.time() + retry_after)) <= 30


# --- uploads: Content-MD5 on SigV4 only, default headers on every attempt -----------------------


def _sigv4_query() -> str:
    now = datetime.now(timezone.utc)
    return (
        "X-Amz-Algorithm=AWS4-HMAC-SHA256"
        f"&X-Amz-Credential=AKIDEXAMPLE%2F{now:%Y%m%d}%2Fus-east-1%2Fs3%2Faws4_request"
        f"&X-Amz-Date={now:%Y%m%dT%H%M%SZ}&X-Amz-Expires=600&X-Amz-SignedHeaders=host"
        f"&X-Amz-Signature={SIGNATURE}"
    )


def _sigv2_query() -> str:
    return f"AWSAccessKeyId=AKIDEXAMPLE&Signature={SIGNATURE}&Expires={int(time.time()) + 600}"


def _md5_b64(body: bytes) -> str:
    return base64.b64encode(hashlib.md5(body).digest()).decode()


async def test_content_md5_only_on_sigv4_urls(make_generate_client, fault_server: FaultServer):
    cases = [("rename", _sigv4_query, True), ("as_signed", _sigv4_query, True),
             ("rename", _sigv2_query, False), ("as_signed", _sigv2_query, False)]
    async with make_generate_client() as client:
        for mode, query, _ in cases:
            response = await client.post("/generate", json={
                "prompt": "x", "s3_prefix": f"{fault_server.url}/bucket/000/1.png?{query()}",
                "upload_mode": mode, **SMALL})
            assert response.status_code == 200, (mode, response.text)
    assert len(fault_server.requests) == len(cases)
    for (mode, query, has_md5), sent in zip(cases, fault_server.requests, strict=True):
        if has_md5:
            assert sent.headers.get("content-md5") == _md5_b64(sent.body), (mode, query)
        else:  # SigV2 signs Content-MD5 positionally: an unsigned one breaks the signature
            assert "content-md5" not in sent.headers, (mode, query)


async def test_a_content_md5_the_request_sends_is_not_replaced(
    make_generate_client, fault_server: FaultServer
):
    client_md5 = _md5_b64(b"the client's own value")  # header names are case-insensitive
    async with make_generate_client() as client:
        response = await client.post("/generate", json={
            "prompt": "x", "s3_prefix": f"{fault_server.url}/bucket/000/1.png?{_sigv4_query()}",
            "upload_headers": {"content-md5": client_md5}, **SMALL})
    assert response.status_code == 200, response.text
    assert fault_server.requests[0].headers["content-md5"] == client_md5


async def test_upload_outcomes_are_logged_succeeded_at_info_failed_at_warning(
    make_generate_client, fault_server: FaultServer, caplog
):
    caplog.set_level(logging.INFO)
    fault_server.script(Step(200), Step(403))  # a 403 is final: no retry
    url = f"{fault_server.url}/bucket/000/1.png?{_sigv2_query()}"
    async with make_generate_client() as client:
        for _ in range(2):
            await client.post("/generate", json={"prompt": "x", "s3_prefix": url, **SMALL})
    levels = {r.getMessage().split(":")[0]: r.levelname for r in caplog.records
              if r.getMessage().startswith("upload ")}
    assert levels == {"upload succeeded": "INFO", "upload failed": "WARNING"}


async def test_default_upload_headers_go_with_every_attempt(
    make_generate_client, fault_server: FaultServer
):
    fault_server.script(Step(500), Step(503), Step(200))
    defaults = {"x-amz-meta-owner": "alice", "cache-control": "max-age=60"}
    url = f"{fault_server.url}/bucket/000/1.png?{_sigv2_query()}"
    async with make_generate_client(
        upload_default_headers=[f"{k}: {v}" for k, v in defaults.items()]
    ) as client:
        response = await client.post("/generate", json={
            "prompt": "x", "s3_prefix": url, "upload_headers": {"x-amz-acl": "private"}, **SMALL})
    assert response.status_code == 200, response.text
    assert len(fault_server.requests) == 3  # two refusals retried, then stored
    for sent in fault_server.requests:
        assert {k: sent.headers.get(k) for k in defaults} == defaults
        assert sent.headers["x-amz-acl"] == "private"  # the request's own headers too


# --- the access log: paths, never query strings -------------------------------------------------


async def test_access_log_never_holds_a_query_string(tiny_vit_dir, caplog):
    caplog.set_level(logging.DEBUG)
    app = create_app(settings_for(tiny_vit_dir))
    query = f"?X-Amz-Signature={SIGNATURE}&Signature={SIGNATURE}"
    async with running_app(app) as client:
        ready = await client.get(f"/readyz{query}")
        classified = await client.post(f"/v1/classify{query}", json={"images": [PNG_B64]})
    assert (ready.status_code, classified.status_code) == (200, 200)
    access = [r.getMessage() for r in caplog.records if r.name == "safegen.access"]
    assert any(m.startswith("GET /readyz ") for m in access), access
    assert any(m.startswith("POST /v1/classify ") for m in access), access
    assert not any("?" in m for m in access), access
    # The test's own client (httpx) logs the URLs it sends; everything else must not hold them.
    assert not any(SIGNATURE in r.getMessage() for r in caplog.records if r.name != "httpx")


# --- /generate: the score and the upload run concurrently ---------------------------------------


class ClassifierWaitingForTheUpload:
    """Scores only once the storage holds the upload request, then lets the storage answer.

    Run one after the other, either order deadlocks: score first never sees the upload (fail-safe
    score after ``SAFEGEN_NSFW_TIMEOUT_S``); upload first never gets its answer (502)."""

    model_name = "gated"
    labels = ["normal", "nsfw"]
    ready = True

    def __init__(self, storage: FaultServer) -> None:
        self.storage = storage

    async def classify_bytes(self, items: list[bytes]) -> list[Any]:
        raise AssertionError("not used by /generate")

    async def classify_image(self, image: Image.Image) -> Score:
        await _until(lambda: len(self.storage.requests) > 0, timeout_s=30)
        self.storage.release.set()
        return Score(label="normal", nsfw_score=0.25, scores={"normal": 0.75, "nsfw": 0.25})


async def test_score_and_upload_run_concurrently(make_generate_client, fault_server: FaultServer):
    fault_server.script(Step(200, delay_s=60))  # answers when released by the classifier
    url = f"{fault_server.url}/bucket/000/1.png?{_sigv2_query()}"
    async with make_generate_client(
        classifier=ClassifierWaitingForTheUpload(fault_server), nsfw_timeout_s=10,
        upload_attempt_timeout_s=10, upload_deadline_s=12,
    ) as client:
        response = await client.post("/generate", json={"prompt": "x", "s3_prefix": url, **SMALL})
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert data["nsfw_score"] == 0.25  # scored, not the fail-safe 1.0
    assert data["s3_upload_status"] == 200


# --- rate limits per client address; X-Forwarded-For from trusted proxies only ------------------


async def test_rate_limit_per_client_address_and_forwarded_only_from_trusted_proxies(tiny_vit_dir):
    settings = settings_for(tiny_vit_dir, api_keys=[], no_auth=True, rate_limit="1/minute",
                            trusted_proxies=["10.0.0.1"])
    app = create_app(settings)
    body = json.dumps({"images": [PNG_B64]}).encode()

    async def status(peer: str, forwarded: str | None = None) -> int:
        headers = {} if forwarded is None else {"x-forwarded-for": forwarded}
        code, _, _ = await call_raw(app, "/v1/classify", body, headers, client=(peer, 5000))
        return code

    async with running_app(app):
        # One budget per address: the second client is not charged for the first one's request.
        assert [await status("192.0.2.1"), await status("192.0.2.1")] == [200, 429]
        assert await status("192.0.2.2") == 200
        # An untrusted peer cannot pick a fresh identity per request with X-Forwarded-For.
        assert await status("192.0.2.3", "198.51.100.7") == 200
        assert await status("192.0.2.3", "198.51.100.8") == 429
        # Behind the trusted proxy, each forwarded client has its own budget, and only that one.
        assert await status("10.0.0.1", "198.51.100.9") == 200
        assert await status("10.0.0.1", "198.51.100.10") == 200
        assert await status("10.0.0.1", "198.51.100.9") == 429
        assert await status("10.0.0.1", "203.0.113.5, 198.51.100.10") == 429  # rightmost hop


# --- the default limits -------------------------------------------------------------------------


async def test_default_rate_limits_are_the_readme_values(tiny_vit_dir, tiny_sd_dir):
    # settings_for leaves SAFEGEN_RATE_LIMIT and SAFEGEN_RATE_LIMIT_ROUTES at their defaults.
    app = create_app(settings_for(tiny_vit_dir, generator_model=str(tiny_sd_dir)))
    async with running_app(app) as client:
        generated = await client.post("/generate", json={"prompt": "x", **SMALL,
                                                         "response_format": "b64_json"})
        classified = await client.post("/v1/classify", json={"images": [PNG_B64]})
    assert generated.status_code == 200, generated.text
    assert generated.headers["x-ratelimit-limit"] == "60"  # /generate=60/minute
    assert generated.headers["x-ratelimit-remaining"] == "59"
    assert classified.headers["x-ratelimit-limit"] == "600"  # 600/minute

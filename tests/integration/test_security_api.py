"""Authentication and rate limits on the real routes, in-process."""

from __future__ import annotations

import base64
import hashlib
import time
from pathlib import Path

import pytest

from safegen.app import create_app
from tests.support import images
from tests.support.app_client import (
    SMALL,
    TEST_KEY,
    generate_settings,
    running_app,
    settings_for,
)

PNG = images.png(1)


def classify_request(count: int = 1) -> dict:
    return {"json": {"images": [base64.b64encode(PNG).decode()] * count}}


@pytest.mark.parametrize("route", ["/v1/classify", "/generate", "/metrics"])
@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),
        ({"Authorization": "Bearer wrong-key-wrong-key-wrong"}, 401),
        ({"X-API-Key": "wrong-key-wrong-key-wrong"}, 401),
        ({"Authorization": f"Bearer {TEST_KEY}"}, 200),
        ({"authorization": f"bearer {TEST_KEY}"}, 200),
        ({"X-API-Key": TEST_KEY}, 200),
    ],
    ids=["none", "wrong-bearer", "wrong-x-api-key", "bearer", "bearer-lowercase", "x-api-key"],
)
async def test_keys_protect_every_working_route(
    tiny_vit_dir, tiny_sd_dir, route, headers, status
):
    settings = (generate_settings(tiny_vit_dir, tiny_sd_dir) if route == "/generate"
                else settings_for(tiny_vit_dir))
    async with running_app(create_app(settings), headers=headers) as client:
        if route == "/metrics":
            response = await client.get(route)
        elif route == "/generate":
            response = await client.post(route, json={"prompt": "x", **SMALL,
                                                      "response_format": "b64_json"})
        else:
            response = await client.post(route, **classify_request())
        assert (await client.get("/healthz")).status_code == 200  # always open
        assert (await client.get("/readyz")).status_code == 200
    assert response.status_code == status, response.text
    if status == 401:
        assert response.headers["www-authenticate"].startswith("Bearer")
        assert response.json()["error"]["code"] == "unauthorized"
        assert TEST_KEY not in response.text
    elif route == "/metrics":  # the work of the route itself, not only "let through"
        assert "safegen_ready 1.0" in response.text
    elif route == "/generate":
        jpeg = base64.b64decode(response.json()["data"]["b64_json"])
        assert response.json()["data"]["image_hash"] == hashlib.md5(jpeg).hexdigest()
    else:
        (result,) = response.json()["results"]
        assert 0 <= result["nsfw_score"] <= 1


async def test_sha256_digests_configure_keys_and_metrics_can_be_public(tiny_vit_dir):
    # The README's "sha256:<hex>" form, the digest computed here as an operator would.
    digest = hashlib.sha256(TEST_KEY.encode()).hexdigest()
    settings = settings_for(tiny_vit_dir, api_keys=[f"sha256:{digest}"], metrics_public=True)
    async with running_app(create_app(settings), headers={}) as client:
        assert (await client.get("/metrics")).status_code == 200
        refused = await client.post("/v1/classify", **classify_request())
        accepted = await client.post("/v1/classify", headers={"X-API-Key": TEST_KEY},
                                     **classify_request())
    assert refused.status_code == 401
    assert accepted.status_code == 200


async def test_secure_by_default_generates_a_key(tiny_vit_dir, capsys, caplog):
    settings = settings_for(tiny_vit_dir, api_keys=[])
    app = create_app(settings)
    assert capsys.readouterr().err == ""  # not a terminal: the key goes to a private file
    where = next(r.args[0] for r in caplog.records if "written to" in r.getMessage())
    generated = Path(where).read_text().strip()
    Path(where).unlink()
    async with running_app(app, headers={}) as client:
        assert (await client.post("/v1/classify", **classify_request())).status_code == 401
        ok = await client.post("/v1/classify", headers={"Authorization": f"Bearer {generated}"},
                               **classify_request())
    assert ok.status_code == 200


async def test_rate_limit_counts_images_and_sends_headers(tiny_vit_dir):
    settings = settings_for(tiny_vit_dir, rate_limit="5/minute")
    async with running_app(create_app(settings)) as client:
        first = await client.post("/v1/classify", **classify_request(3))
        second = await client.post("/v1/classify", **classify_request(3))
        third = await client.post("/v1/classify", **classify_request(2))
        too_big = await client.post("/v1/classify", **classify_request(6))
        metrics = (await client.get("/metrics")).text
    assert first.status_code == 200
    assert first.headers["x-ratelimit-limit"] == "5"
    assert first.headers["x-ratelimit-remaining"] == "2"
    assert second.status_code == 429  # 3 more images do not fit in the 2 left
    assert int(second.headers["retry-after"]) >= 1
    assert second.json()["error"]["code"] == "rate_limited"
    assert third.status_code == 200
    assert too_big.status_code == 429
    assert "rate_limited" in metrics


class Clock:
    """Wall-clock time for the in-memory rate-limit storage, moved forward by the test."""

    def __init__(self) -> None:
        self.now = time.time()

    def time(self) -> float:
        return self.now


async def test_limits_are_per_key_and_reset(tiny_vit_dir, monkeypatch):
    import limits.aio.storage.memory as memory_storage

    # The window is measured by the storage's clock: the test moves it instead of sleeping, so
    # a slow machine cannot let the window pass between the requests meant to share it.
    clock = Clock()
    monkeypatch.setattr(memory_storage, "time", clock)
    other = "another-key-not-a-secret-98765"
    settings = settings_for(tiny_vit_dir, api_keys=[TEST_KEY, other], rate_limit="2/minute")
    async with running_app(create_app(settings)) as client:
        statuses = [(await client.post("/v1/classify", **classify_request())).status_code
                    for _ in range(3)]
        other_key = await client.post("/v1/classify", headers={"Authorization": f"Bearer {other}"},
                                      **classify_request())
        clock.now += 59
        still_limited = await client.post("/v1/classify", **classify_request())
        clock.now += 2  # a minute and a second after the first two requests
        after_reset = await client.post("/v1/classify", **classify_request())
    assert statuses == [200, 200, 429]
    assert other_key.status_code == 200
    assert still_limited.status_code == 429
    assert after_reset.status_code == 200


@pytest.mark.parametrize(("fail_open", "status"), [(True, 200), (False, 503)])
async def test_redis_down_follows_the_configured_policy(
    tiny_vit_dir, redis_server, fail_open, status
):
    settings = settings_for(tiny_vit_dir, rate_limit_storage=redis_server.url,
                            rate_limit_fail_open=fail_open)
    async with running_app(create_app(settings)) as client:
        assert (await client.post("/v1/classify", **classify_request())).status_code == 200
        redis_server.stop()
        during = await client.post("/v1/classify", **classify_request())
        metrics = (await client.get("/metrics")).text
    assert during.status_code == status
    policy = "fail_open" if fail_open else "fail_closed"
    assert f'safegen_ratelimit_storage_errors_total{{policy="{policy}"}} 1.0' in metrics

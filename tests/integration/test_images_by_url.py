"""Images by URL in /v1/classify JSON: fetched under the fetch egress policy, bounded."""

from __future__ import annotations

import base64

from tests.support import images

LOCAL = {"fetch_allowed_schemes": ["http"], "fetch_allow_loopback": True}


async def test_urls_and_data_urls_score_like_uploads(make_client, image_server):
    data = images.png(4)
    url = image_server.add("a.png", data)
    data_url = "data:image/png;base64," + base64.b64encode(data).decode()
    async with make_client(**LOCAL) as client:
        uploaded = await client.post("/v1/classify", files=[("files", ("a.png", data))])
        by_url = await client.post("/v1/classify", json={
            "images": [{"url": url}, {"url": data_url}, base64.b64encode(data).decode()],
        })
    assert by_url.status_code == 200, by_url.text
    expected = uploaded.json()["results"][0]["scores"]
    assert [r["scores"] for r in by_url.json()["results"]] == [expected] * 3


async def test_each_failed_fetch_is_its_own_error(make_client, image_server):
    good = image_server.add("good.png", images.png(1))
    html = image_server.add("page.html", b"<html></html>", "text/html")
    items = [
        {"url": good},
        {"url": f"{image_server.url}/redirect?to={good}"},
        {"url": f"{image_server.url}/endless"},
        {"url": html},
        {"url": f"{image_server.url}/img/missing.png"},
        {"url": "http://169.254.169.254/latest/meta-data/"},
        {"url": "data:text/plain;base64," + base64.b64encode(b"hello").decode()},
        {"url": "data:image/png;base64," + base64.b64encode(b"not a png").decode()},
        {"url": f"{image_server.url}/slow"},
    ]
    async with make_client(**LOCAL, fetch_max_bytes=1_000_000, fetch_timeout_s=1.0) as client:
        response = await client.post("/v1/classify", json={"images": items})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert "nsfw_score" in results[0]
    redirect, endless, page, missing, metadata, text, fake, slow = (
        r["error"] for r in results[1:]
    )
    assert redirect["code"] == "fetch_target_rejected"
    assert "SAFEGEN_FETCH_MAX_REDIRECTS" in redirect["message"]
    assert endless["code"] == "too_large"
    assert "SAFEGEN_FETCH_MAX_BYTES" in endless["message"]
    assert image_server.endless_sent < 50_000_000  # cut near the cap, not read to the end
    assert "text/html" in page["message"]
    assert "404" in missing["message"]
    assert metadata["code"] == "fetch_target_rejected"
    assert "not an image" in text["message"]
    assert fake["code"] == "invalid_image"
    assert "SAFEGEN_FETCH_TIMEOUT_S" in slow["message"]


async def test_redirects_when_allowed_are_checked_at_every_hop(make_client, image_server):
    good = image_server.add("good.png", images.png(2))
    hop = f"{image_server.url}/redirect?to="
    local_name = good.replace("127.0.0.1", "localhost")
    async with make_client(
        **LOCAL, fetch_max_redirects=2, fetch_allowed_hosts=["127.0.0.1"]
    ) as client:
        response = await client.post("/v1/classify", json={"images": [
            {"url": hop + good},  # one hop to an allowed host
            {"url": hop + local_name},  # a hop to a host the allowlist refuses (loopback name)
            {"url": hop + "http://169.254.169.254/"},  # a hop to cloud metadata
            {"url": hop + hop + hop + good},  # three hops, the limit is two
        ]})
    ok, other_host, metadata, too_many = response.json()["results"]
    assert "nsfw_score" in ok
    assert other_host["error"]["code"] == "fetch_target_rejected"
    assert metadata["error"]["code"] == "fetch_target_rejected"
    assert "more than 2" in too_many["error"]["message"]
    assert "/img/good.png" in image_server.paths


async def test_fetching_is_off_for_loopback_by_default(make_client, image_server):
    url = image_server.add("a.png", images.png(1)).replace("http:", "https:")
    async with make_client() as client:
        response = await client.post("/v1/classify", json={"images": [{"url": url}]})
    error = response.json()["results"][0]["error"]
    assert error["code"] == "fetch_target_rejected"
    assert image_server.paths == []

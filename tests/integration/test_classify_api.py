"""/v1/classify, /healthz, /readyz and /metrics through the app with its lifespan running."""

from __future__ import annotations

import asyncio
import base64

import pytest

from tests.support import images


async def test_multipart_batch_scores_every_good_image_and_reports_bad_ones(
    make_client, tiny_vit_dir
):
    files = [
        ("files", ("a.jpg", images.jpeg(1), "image/jpeg")),
        ("files", ("notes.txt", b"just text", "text/plain")),
        ("files", ("b.png", images.png(2), "image/png")),
        ("files", ("empty.jpg", b"", "image/jpeg")),
        ("files", ("half.jpg", images.truncated_jpeg(), "image/jpeg")),
        ("files", ("c.webp", images.encode(images.photo_like(3, (64, 64)), "WEBP"), "image/webp")),
    ]
    async with make_client() as client:
        response = await client.post("/v1/classify", files=files)
    assert response.status_code == 200
    body = response.json()
    assert body["model"] == str(tiny_vit_dir)
    results = body["results"]
    assert [r["index"] for r in results] == list(range(6))
    assert [r["filename"] for r in results] == [f[1][0] for f in files]
    for index in (0, 2, 5):
        scored = results[index]
        assert scored["label"] in ("normal", "nsfw")
        assert set(scored["scores"]) == {"normal", "nsfw"}
        assert abs(sum(scored["scores"].values()) - 1) < 1e-5
        assert scored["nsfw_score"] == scored["scores"]["nsfw"]
    assert results[1]["error"]["code"] == "invalid_image"
    assert "not a recognised image" in results[1]["error"]["message"]
    assert "empty" in results[3]["error"]["message"]
    assert "truncated" in results[4]["error"]["message"]


async def test_json_base64_matches_multipart(make_client):
    data = images.jpeg(5)
    async with make_client() as client:
        multipart = await client.post("/v1/classify", files=[("files", ("x.jpg", data))])
        as_json = await client.post(
            "/v1/classify",
            json={"images": [base64.b64encode(data).decode(), "%%%",
                             "data:image/jpeg;base64," + base64.b64encode(data).decode()],
                  "filenames": ["x.jpg", "bad", "url"]},
        )
    assert as_json.status_code == 200
    first, bad, data_url = as_json.json()["results"]
    assert first["scores"] == multipart.json()["results"][0]["scores"]
    assert data_url["scores"] == first["scores"]
    assert bad["error"] == {"code": "invalid_image", "message": "not valid base64"}


@pytest.mark.parametrize(
    ("kwargs", "status", "field"),
    [
        ({"json": {"images": []}}, 422, "files"),
        ({"json": {"images": "abc"}}, 422, "images"),
        ({"json": {"images": ["a"], "filenames": ["1", "2"]}}, 422, "filenames"),
        ({"content": b"raw", "headers": {"content-type": "image/jpeg"}}, 422, "content-type"),
        ({"data": {"other": "x"}, "files": [("files", ("a.jpg", b"x"))]}, 422, "other"),
    ],
    ids=["zero-images", "not-a-list", "filenames-mismatch", "wrong-content-type", "extra-field"],
)
async def test_bad_requests_get_a_clear_4xx(make_client, kwargs, status, field):
    async with make_client() as client:
        response = await client.post("/v1/classify", **kwargs)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["field"] == field
    assert error["message"]
    assert error["request_id"]


async def test_too_many_files_is_refused_naming_the_limit(make_client):
    async with make_client(max_files_per_request=3) as client:
        response = await client.post(
            "/v1/classify", json={"images": [base64.b64encode(images.png(i)).decode()
                                             for i in range(4)]}
        )
        multipart = await client.post(
            "/v1/classify", files=[("files", (f"{i}.png", images.png(i))) for i in range(4)]
        )
    assert response.status_code == 413
    assert "SAFEGEN_MAX_FILES_PER_REQUEST" in response.json()["error"]["message"]
    assert multipart.status_code == 413
    assert "SAFEGEN_MAX_FILES_PER_REQUEST" in multipart.json()["error"]["message"]


async def test_oversized_image_is_a_per_image_error(make_client):
    async with make_client(max_image_bytes=50_000) as client:
        response = await client.post(
            "/v1/classify",
            files=[("files", ("big.jpg", images.jpeg(1))), ("files", ("ok.png", images.png(1)))],
        )
    big, ok = response.json()["results"]
    assert big["error"]["code"] == "too_large"
    assert "SAFEGEN_MAX_IMAGE_BYTES" in big["error"]["message"]
    assert "nsfw_score" in ok


async def test_concurrent_requests_are_batched_together(make_client):
    async with make_client(max_batch_size=16, max_batch_wait_ms=50) as client:
        payloads = [images.jpeg(i) for i in range(16)]
        responses = await asyncio.gather(
            *(client.post("/v1/classify", files=[("files", ("x.jpg", p))]) for p in payloads)
        )
        assert all(r.status_code == 200 for r in responses)
        metrics = (await client.get("/metrics")).text
    count = _metric(metrics, "safegen_batch_size_count")
    total = _metric(metrics, "safegen_batch_size_sum")
    assert total == 16  # every image went through the batcher once (warm-up is not counted)
    assert count < 16, "16 concurrent single-image requests must share batches"


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in metrics")


async def test_health_readiness_metrics_and_docs(make_client):
    async with make_client() as client:
        assert (await client.get("/healthz")).json() == {"status": "ok", "components": {}}
        ready = await client.get("/readyz")
        assert ready.status_code == 200
        assert ready.json()["components"]["classifier"] is True
        await client.post("/v1/classify", files=[("files", ("a.png", images.png(1))),
                                                 ("files", ("b.png", b"not an image"))])
        metrics = (await client.get("/metrics")).text
        assert 'safegen_http_requests_total{method="POST",route="/v1/classify",status="200"} 1.0' \
            in metrics
        assert "safegen_queue_depth 0.0" in metrics
        assert 'safegen_classified_images_total{outcome="scored"} 1.0' in metrics
        assert 'safegen_classified_images_total{outcome="invalid_image"} 1.0' in metrics
        assert "safegen_ready 1.0" in metrics
        docs = await client.get("/docs")
        schema = (await client.get("/openapi.json")).json()
    assert docs.status_code == 200
    body = schema["paths"]["/v1/classify"]["post"]["requestBody"]["content"]
    assert {"multipart/form-data", "application/json"} <= set(body)


async def test_not_ready_before_lifespan_and_request_ids(tiny_vit_dir):
    import httpx

    from safegen.app import create_app
    from tests.support.app_client import AUTH, settings_for

    app = create_app(settings_for(tiny_vit_dir))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t", headers=AUTH) as client:
        assert (await client.get("/readyz")).status_code == 503
        response = await client.post("/v1/classify", files=[("files", ("a.png", images.png(1)))])
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "not_ready"
        echoed = await client.get("/healthz", headers={"X-Request-ID": "abc-123"})
        assert echoed.headers["x-request-id"] == "abc-123"


async def test_verdict_follows_the_default_and_the_request_threshold(make_client):
    files = [("files", (f"{i}.png", images.png(i))) for i in range(3)]
    encoded = [base64.b64encode(images.png(i)).decode() for i in range(3)]
    async with make_client(nsfw_threshold=0.0) as client:
        by_default = await client.post("/v1/classify", files=files)
        own = await client.post("/v1/classify", json={"images": encoded, "nsfw_threshold": 1})
        form = await client.post("/v1/classify", files=files, data={"nsfw_threshold": "1"})
        bad_json = await client.post("/v1/classify", json={"images": encoded,
                                                          "nsfw_threshold": -0.1})
        bad_form = await client.post("/v1/classify", files=files,
                                     data={"nsfw_threshold": "lots"})
        metrics = (await client.get("/metrics")).text
    # SAFEGEN_NSFW_THRESHOLD=0: every score is at or above it.
    assert [r["nsfw"] for r in by_default.json()["results"]] == [True] * 3
    for response in (own, form):
        assert response.status_code == 200, response.text
        results = response.json()["results"]
        assert all(r["nsfw_score"] < 1 for r in results)
        assert [r["nsfw"] for r in results] == [False] * 3
    assert bad_json.status_code == 422
    assert "nsfw_threshold" in bad_json.text
    assert bad_form.status_code == 422
    assert bad_form.json()["error"]["field"] == "nsfw_threshold"
    assert 'safegen_nsfw_flagged_images_total{route="/v1/classify"} 3.0' in metrics


async def test_default_threshold_is_half(make_client):
    async with make_client() as client:
        response = await client.post(
            "/v1/classify", files=[("files", (f"{i}.jpg", images.jpeg(i))) for i in range(4)]
        )
    for result in response.json()["results"]:
        assert result["nsfw"] is (result["nsfw_score"] >= 0.5)

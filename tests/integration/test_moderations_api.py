"""/v1/moderations: OpenAI's moderation shapes, for images only."""

from __future__ import annotations

import base64

import pytest

from tests.support import images

# The 13 categories of OpenAI's moderation API (its documented response).
OPENAI_CATEGORIES = {
    "harassment", "harassment/threatening", "hate", "hate/threatening", "illicit",
    "illicit/violent", "self-harm", "self-harm/instructions", "self-harm/intent", "sexual",
    "sexual/minors", "violence", "violence/graphic",
}


def data_url(data: bytes, kind: str = "image/png") -> str:
    return f"data:{kind};base64," + base64.b64encode(data).decode()


def item(url: str) -> dict:
    return {"type": "image_url", "image_url": {"url": url}}


async def test_one_result_per_image_with_every_category(make_client, image_server):
    first, second = images.png(1), images.jpeg(2, (64, 64))
    url = image_server.add("b.jpg", second, "image/jpeg")
    async with make_client(fetch_allowed_schemes=["http"], fetch_allow_loopback=True,
                           nsfw_threshold=0.0) as client:
        classified = await client.post("/v1/classify", files=[("files", ("a", first)),
                                                              ("files", ("b", second))])
        response = await client.post("/v1/moderations", json={
            "model": "omni-moderation-latest", "input": [item(data_url(first)), item(url)],
        })
        metrics = (await client.get("/metrics")).text
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["id"].startswith("modr-")
    scores = [r["nsfw_score"] for r in classified.json()["results"]]
    assert len(body["results"]) == 2
    for result, score in zip(body["results"], scores, strict=True):
        assert set(result["categories"]) == OPENAI_CATEGORIES
        assert set(result["category_scores"]) == OPENAI_CATEGORIES
        assert set(result["category_applied_input_types"]) == OPENAI_CATEGORIES
        assert result["category_scores"]["sexual"] == score
        assert result["categories"]["sexual"] is True  # threshold 0
        assert result["flagged"] is True
        assert result["category_applied_input_types"]["sexual"] == ["image"]
        for name in OPENAI_CATEGORIES - {"sexual"}:  # not judged by this model
            assert result["categories"][name] is False
            assert result["category_scores"][name] == 0.0
            assert result["category_applied_input_types"][name] == []
    assert 'safegen_nsfw_flagged_images_total{route="/v1/moderations"} 2.0' in metrics


@pytest.mark.parametrize("text_input", [
    "some text",
    ["two", "texts"],
    [{"type": "text", "text": "hello"}],
])
async def test_text_is_refused_never_silently_passed(make_client, text_input):
    async with make_client() as client:
        response = await client.post("/v1/moderations", json={"input": text_input})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "unsupported_input"
    assert "images only" in error["message"]
    assert error["field"] == "input[0]"


async def test_a_bad_item_fails_the_request_naming_it(make_client):
    good = item(data_url(images.png(1)))
    async with make_client(nsfw_threshold=1.0) as client:
        ok = await client.post("/v1/moderations", json={"input": [good]})
        not_image = await client.post("/v1/moderations", json={
            "input": [good, item(data_url(b"plain words", "text/plain"))],
        })
        fake_png = await client.post("/v1/moderations", json={
            "input": [good, item(data_url(b"plain words"))],
        })
        mixed = await client.post("/v1/moderations", json={
            "input": [good, {"type": "text", "text": "x"}],
        })
    assert ok.json()["results"][0]["flagged"] is False  # threshold 1
    for response in (not_image, fake_png, mixed):
        assert response.status_code == 400
        assert response.json()["error"]["field"] == "input[1]"
    assert "not an image" in not_image.json()["error"]["message"]
    assert fake_png.json()["error"]["code"] == "invalid_image"

"""The official ``openai`` SDK against a real ``safegen serve`` process: its typed results parse."""

from __future__ import annotations

import base64

import openai
import pytest
from openai.types import ModerationCreateResponse
from tests.support import images
from tests.support.app_client import TEST_KEY


def test_openai_sdk_moderates_urls_and_data_urls(
    server_process, tiny_vit_dir, image_server
):
    url = image_server.add("a.png", images.png(3))
    server = server_process({
        "SAFEGEN_NSFW_MODEL": str(tiny_vit_dir),
        "SAFEGEN_FETCH_ALLOWED_SCHEMES": "http",
        "SAFEGEN_FETCH_ALLOW_LOOPBACK": "true",
    })
    client = openai.OpenAI(
        base_url=f"{server.url}/v1", api_key=TEST_KEY, _strict_response_validation=True,
        max_retries=0,
    )
    data_url = "data:image/jpeg;base64," + base64.b64encode(images.jpeg(1, (64, 64))).decode()
    moderation = client.moderations.create(
        model="omni-moderation-latest",
        input=[{"type": "image_url", "image_url": {"url": url}},
               {"type": "image_url", "image_url": {"url": data_url}}],
    )
    assert isinstance(moderation, ModerationCreateResponse)
    assert len(moderation.results) == 2
    for result in moderation.results:
        assert 0 <= result.category_scores.sexual <= 1
        assert result.categories.sexual is (result.category_scores.sexual >= 0.5)
        assert result.flagged is result.categories.sexual
        assert result.category_applied_input_types.sexual == ["image"]
        assert result.categories.violence is False
        assert result.category_applied_input_types.violence == []
    assert image_server.paths == ["/img/a.png"]

    with pytest.raises(openai.BadRequestError) as refused:
        client.moderations.create(input="is this text fine?")
    assert refused.value.status_code == 400
    assert "images only" in str(refused.value)

    wrong_key = openai.OpenAI(base_url=f"{server.url}/v1", api_key="nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong_key.moderations.create(input=[{"type": "image_url", "image_url": {"url": url}}])

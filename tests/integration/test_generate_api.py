"""/generate in-process: tiny diffusers pipeline, tiny ViT, real S3-compatible servers."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io

import pytest
from PIL import Image

from safegen.app import create_app
from safegen.delivery import rename_object
from tests.support.app_client import SMALL, generate_settings, running_app
from tests.support.faultserver import Step


class BrokenClassifier:
    """Stands in for a classifier that raises or stalls (a fault we cannot cause for real)."""

    model_name = "broken"
    labels = ["normal", "nsfw"]
    ready = True

    def __init__(self, stall_s: float | None = None) -> None:
        self.stall_s = stall_s

    async def classify_bytes(self, items):
        raise RuntimeError("model crashed")

    async def classify_image(self, image):
        if self.stall_s is not None:
            await asyncio.sleep(self.stall_s)
        raise RuntimeError("model crashed")


async def test_spec_flow_stores_md5_named_jpeg(make_generate_client, moto_s3):
    prefix = moto_s3.presign_put("aiu-character/000/1.png", v4=False)
    async with make_generate_client() as client:
        response = await client.post("/generate", json={
            "prompt": "a lighthouse at dusk", "negative_prompt": "blurry", "s3_prefix": prefix,
            "upscale": "true", "enable_nsfw_check": "true", "seed": 7, **SMALL,
        })
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert set(data) == {"s3_url", "nsfw_score", "nsfw", "image_hash", "s3_upload_status"}
    assert data["nsfw"] is (data["nsfw_score"] >= 0.5)  # SAFEGEN_NSFW_THRESHOLD's default
    timing = dict(part.split(";dur=") for part in response.headers["server-timing"].split(", "))
    assert set(timing) == {"generate", "encode", "nsfw", "upload", "total"}
    assert float(timing["total"]) >= float(timing["generate"]) > 0
    assert data["s3_upload_status"] == 200
    assert data["s3_url"] == rename_object(prefix, f"{data['image_hash']}.jpg")
    assert data["s3_url"].split("?", 1)[1] == prefix.split("?", 1)[1]  # query byte for byte
    assert 0 <= data["nsfw_score"] <= 1
    stored = moto_s3.get(f"aiu-character/000/{data['image_hash']}.jpg")
    assert hashlib.md5(stored).hexdigest() == data["image_hash"]
    image = Image.open(io.BytesIO(stored))
    assert image.format == "JPEG"
    assert image.size == (128, 256)  # upscaled 2x


async def test_rename_on_a_sigv2_checking_server_is_a_clear_final_403(
    make_generate_client, s3rver
):
    prefix = s3rver.presign_put("renamed/1.png")
    async with make_generate_client() as client:
        response = await client.post("/generate", json={
            "prompt": "x", "s3_prefix": prefix, **SMALL,
        })
        metrics = (await client.get("/metrics")).text
    assert response.status_code == 502
    body = response.json()
    assert body["data"]["s3_upload_status"] == 403
    assert body["error"]["code"] == "upload_failed"
    assert "signature" in body["error"]["message"].lower()
    assert 'safegen_upload_attempts_total{status_class="4xx"} 1.0' in metrics  # not retried
    assert 'safegen_uploads_total{result="failure"} 1.0' in metrics


async def test_as_signed_mode_succeeds_where_rename_cannot(make_generate_client, s3rver):
    url = s3rver.presign_put("as-signed/1.png")
    async with make_generate_client() as client:
        response = await client.post("/generate", json={
            "prompt": "x", "s3_prefix": url, "upload_mode": "as_signed", **SMALL,
        })
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert data["s3_url"] == url
    assert hashlib.md5(s3rver.get("as-signed/1.png")).hexdigest() == data["image_hash"]


async def test_retries_500_500_then_200_after_the_configured_backoff(
    tiny_vit_dir, tiny_sd_dir, fault_server
):
    """The waits between attempts are the configured backoff, in order, each one between the
    attempt it follows and the next: the uploader's sleep is recorded instead of waited for."""
    fault_server.script(Step(500), Step(500), Step(200))
    waits: list[tuple[float, int]] = []  # (seconds asked for, PUTs the storage had seen then)

    async def recording_sleep(seconds: float) -> None:
        waits.append((seconds, len(fault_server.requests)))

    app = create_app(generate_settings(tiny_vit_dir, tiny_sd_dir, upload_backoff_s=[1, 2, 4]))
    async with running_app(app) as client:
        app.state.generate_service.uploader._sleep = recording_sleep  # built by the lifespan
        response = await client.post("/generate", json={
            "prompt": "x", "s3_prefix": f"{fault_server.url}/b/1.png?Signature=abc", **SMALL,
        })
    assert response.status_code == 200, response.text
    puts = [r for r in fault_server.requests if r.method == "PUT"]
    assert len(puts) == 3
    assert waits == [(1, 1), (2, 2)]  # 1 s after the first 500, 2 s after the second
    assert puts[0].target.endswith(f"/b/{response.json()['data']['image_hash']}.jpg?Signature=abc")


@pytest.mark.slow  # waits the real 1 + 2 s
async def test_retries_500_500_then_200_with_the_real_backoff(make_generate_client, fault_server):
    fault_server.script(Step(500), Step(500), Step(200))
    async with make_generate_client(upload_backoff_s=[1, 2, 4]) as client:
        response = await client.post("/generate", json={
            "prompt": "x", "s3_prefix": f"{fault_server.url}/b/1.png?Signature=abc", **SMALL,
        })
    assert response.status_code == 200, response.text
    puts = [r for r in fault_server.requests if r.method == "PUT"]
    assert len(puts) == 3
    gaps = [b.at - a.at for a, b in zip(puts, puts[1:], strict=False)]
    # At least the backoff: a busy host can only add to it, so the lower bounds hold. The
    # upper bounds are generous: they tell 1 s from the next step's 2 s (and 2 s from 4 s)
    # with room for a loaded host.
    assert 0.9 <= gaps[0] < 1 + 1.5
    assert 1.9 <= gaps[1] < 2 + 1.5


@pytest.mark.parametrize(
    ("steps", "attempts", "status"),
    [([Step(403)], 1, 403), ([Step(503)], 4, 503), ([Step(drop=True)], 4, 0)],
    ids=["403-final", "503-four-times", "dropped-connections"],
)
async def test_failed_uploads_answer_502_with_the_last_status(
    make_generate_client, fault_server, steps, attempts, status
):
    fault_server.script(*steps)
    async with make_generate_client() as client:
        response = await client.post("/generate", json={
            "prompt": "x", "s3_prefix": f"{fault_server.url}/b/1.png", **SMALL,
        })
    assert response.status_code == 502
    body = response.json()
    assert body["data"]["s3_upload_status"] == status
    assert body["data"]["image_hash"]
    assert body["error"]["message"]
    assert len([r for r in fault_server.requests if r.method == "PUT"]) == attempts


@pytest.mark.parametrize("stall_s", [None, 2.0], ids=["model-raises", "model-stalls"])
async def test_nsfw_failure_or_timeout_gives_failsafe_and_upload_still_happens(
    make_generate_client, fault_server, stall_s
):
    async with make_generate_client(BrokenClassifier(stall_s), nsfw_timeout_s=0.3) as client:
        response = await client.post("/generate", json={
            "prompt": "x", "s3_prefix": f"{fault_server.url}/b/1.png", **SMALL,
        })
        metrics = (await client.get("/metrics")).text
    assert response.status_code == 200
    assert response.json()["data"]["nsfw_score"] == 1.0
    assert response.json()["data"]["nsfw"] is True  # a failed check counts as NSFW
    assert len(fault_server.requests) == 1
    reason = "error" if stall_s is None else "timeout"
    assert f'safegen_nsfw_failsafe_total{{reason="{reason}"}} 1.0' in metrics
    assert 'safegen_nsfw_flagged_images_total{route="/generate"} 1.0' in metrics


async def test_booleans_as_json_or_strings_and_disabled_check(make_generate_client):
    async with make_generate_client() as client:
        off = await client.post("/generate", json={
            "prompt": "x", "response_format": "b64_json", "enable_nsfw_check": False,
            "upscale": "false", **SMALL,
        })
        on = await client.post("/generate", json={
            "prompt": "x", "response_format": "b64_json", "enable_nsfw_check": "true",
            "upscale": True, "seed": 1, **SMALL,
        })
    assert off.status_code == 200, off.text
    assert off.json()["data"]["nsfw_score"] is None
    assert off.json()["data"]["nsfw"] is None  # not checked: no verdict
    jpeg = base64.b64decode(off.json()["data"]["b64_json"])
    assert hashlib.md5(jpeg).hexdigest() == off.json()["data"]["image_hash"]
    assert Image.open(io.BytesIO(jpeg)).size == (64, 128)  # not upscaled
    assert 0 <= on.json()["data"]["nsfw_score"] <= 1
    assert Image.open(io.BytesIO(base64.b64decode(on.json()["data"]["b64_json"]))).size == (
        128, 256,
    )


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"prompt": ""}, "prompt"),
        ({"prompt": "x" * 3000}, "prompt"),
        ({"width": 65}, "width"),
        ({"height": 4096}, "height"),
        ({"width": "wide"}, "width"),
        ({"num_inference_steps": 0}, "num_inference_steps"),
        ({"num_inference_steps": 1000}, "num_inference_steps"),
        ({"response_format": "png"}, "response_format"),
        ({"upscale": "yes"}, "upscale"),
        ({"enable_nsfw_check": 1}, "enable_nsfw_check"),
        ({"seed": -1}, "seed"),
        ({"s3_prefix": None}, "s3_prefix"),
        ({"s3_prefix": "ftp://example.com/1.png"}, None),
        ({"s3_prefix": "http://169.254.169.254/latest/1.png"}, None),
        ({"s3_prefix": "http://10.0.0.8/b/1.png"}, None),
        ({"s3_prefix": "http://127.0.0.1:9/b/1.png?Expires=1000"}, None),
        ({"upload_headers": {"Host": "evil"}}, "upload_headers"),
        ({"upload_mode": "post", "s3_post_fields": {"policy": "p"}}, "s3_post_fields"),  # no key
        ({"surprise": 1}, "surprise"),
    ],
)
async def test_every_invalid_field_is_a_422_before_any_generation(
    make_generate_client, change, field
):
    body = {"prompt": "x", "s3_prefix": "http://127.0.0.1:9/b/1.png", **SMALL, **change}
    async with make_generate_client() as client:
        response = await client.post("/generate", json=body)
        metrics = (await client.get("/metrics")).text
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    if field is not None:
        assert error["field"] == field
    assert "Signature" not in response.text
    assert '\nsafegen_generations_total{outcome="generated"} 0.0\n' in metrics  # none generated


async def test_generation_disabled_answers_503(make_client):
    async with make_client() as client:
        response = await client.post("/generate", json={"prompt": "x", "s3_prefix": "https://a/b"})
    assert response.status_code == 503
    assert "SAFEGEN_GENERATOR_MODEL" in response.json()["error"]["message"]


async def test_request_threshold_decides_the_verdict(make_generate_client):
    body = {"prompt": "x", "response_format": "b64_json", "upscale": False, "seed": 3, **SMALL}
    async with make_generate_client() as client:
        everything = await client.post("/generate", json={**body, "nsfw_threshold": 0})
        nothing = await client.post("/generate", json={**body, "nsfw_threshold": 1})
        refused = await client.post("/generate", json={**body, "nsfw_threshold": 1.5})
        metrics = (await client.get("/metrics")).text
    # Threshold 0: every score is at or above it. Threshold 1: a probability below 1 is not.
    assert everything.json()["data"]["nsfw"] is True
    assert nothing.json()["data"]["nsfw_score"] < 1
    assert nothing.json()["data"]["nsfw"] is False
    assert refused.status_code == 422
    assert "nsfw_threshold" in refused.text
    assert 'safegen_nsfw_flagged_images_total{route="/generate"} 1.0' in metrics

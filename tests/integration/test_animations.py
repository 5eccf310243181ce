"""Animated images: a high-scoring frame anywhere in the sequence raises the image's score."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from contextlib import asynccontextmanager

import pytest

from safegen.app import create_app
from safegen.moderation.engine import EngineConfig
from tests.support import images
from tests.support.app_client import running_app, settings_for
from tests.support.red_model import RedEngine


@asynccontextmanager
async def red_app(tiny_vit_dir, **overrides):
    settings = settings_for(tiny_vit_dir, **overrides)
    async with RedEngine(EngineConfig.from_settings(settings)) as engine, running_app(
        create_app(settings, classifier=engine)
    ) as client:
        yield client, engine


@pytest.mark.parametrize("fmt", ["GIF", "WEBP", "PNG"])
@pytest.mark.parametrize("hot", [0, 2, 4])
async def test_a_red_frame_anywhere_flags_the_animation(tiny_vit_dir, fmt, hot):
    async with red_app(tiny_vit_dir) as (client, _):
        response = await client.post("/v1/classify", files=[
            ("files", ("hot", images.animation(fmt, 5, {hot}))),
            ("files", ("calm", images.animation(fmt, 5))),
        ])
    assert response.status_code == 200, response.text
    hot_result, calm = response.json()["results"]
    assert hot_result["nsfw_score"] == pytest.approx(1.0)
    assert hot_result["nsfw"] is True
    assert hot_result["frames_scored"] == 5
    assert hot_result["worst_frame"] == hot
    assert calm["nsfw_score"] == pytest.approx(0.0)
    assert calm["nsfw"] is False
    assert calm["frames_scored"] == 5


@pytest.mark.parametrize(("hot", "worst"), [(0, 0), (39, 39), (17, 17)])
async def test_long_animations_sample_max_frames_first_and_last_included(
    tiny_vit_dir, hot, worst
):
    # 40 frames, 8 scored: 0 and 39 always; 17 is one of the evenly spread ones (39/7 * 3).
    async with red_app(tiny_vit_dir, max_frames=8) as (client, engine):
        response = await client.post(
            "/v1/classify", files=[("files", ("a.gif", images.animation("GIF", 40, {hot})))]
        )
    result = response.json()["results"][0]
    assert result["frames_scored"] == 8
    assert result["worst_frame"] == worst
    assert result["nsfw_score"] == pytest.approx(1.0)
    # Frames share forward passes with each other (the same batcher as still images).
    assert sum(engine.red_backend.batches[2:]) == 8  # after the two warm-up passes
    assert len(engine.red_backend.batches) - 2 < 8


async def test_animation_bombs_are_per_image_errors(tiny_vit_dir):
    many = images.animation("GIF", 10_000, size=(1, 1))
    async with red_app(tiny_vit_dir, max_animation_pixels=200_000) as (client, engine):
        response = await client.post("/v1/classify", files=[
            ("files", ("many.gif", many)),
            ("files", ("wide.webp", images.animation("WEBP", 60, size=(100, 40)))),
            ("files", ("still.png", images.png(1))),
        ])
    many_result, wide, still = response.json()["results"]
    assert many_result["error"]["code"] == "too_large"
    assert "10000 frames" in many_result["error"]["message"]
    assert "SAFEGEN_MAX_ANIMATION_FRAMES" in many_result["error"]["message"]
    assert wide["error"]["code"] == "too_large"
    assert "SAFEGEN_MAX_ANIMATION_PIXELS" in wide["error"]["message"]
    assert still["frames_scored"] == 1
    assert sum(engine.red_backend.batches[2:]) == 1  # no frame of the bombs reached the model


def test_cli_classify_scores_frames(tmp_path, tiny_vit_dir):
    (tmp_path / "a.gif").write_bytes(images.animation("GIF", 20, {19}))
    (tmp_path / "b.gif").write_bytes(images.animation("GIF", 30))
    env = {**os.environ, "SAFEGEN_MAX_FRAMES": "4", "SAFEGEN_MAX_ANIMATION_FRAMES": "25"}
    done = subprocess.run(
        [sys.executable, "-m", "safegen", "classify", str(tmp_path), "--model",
         str(tiny_vit_dir), "--quiet", "--format", "json"],
        capture_output=True, text=True, timeout=120, env=env,
    )
    rows = json.loads(done.stdout)
    assert done.returncode == 1, done.stderr  # one file refused
    assert rows[0]["frames_scored"] == 4
    assert 0 <= rows[0]["nsfw_score"] <= 1
    assert "SAFEGEN_MAX_ANIMATION_FRAMES" in rows[1]["error"]

"""Engine settings resolved at construction (no model is loaded here)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from safegen.imaging import ImageLimits
from safegen.moderation.engine import ClassifierEngine, EngineConfig, available_cpus
from safegen.moderation.frames import FrameLimits
from safegen.settings import Settings
from tests.support.engines import engine_config


@pytest.mark.parametrize(("configured", "expected"), [(0, available_cpus()), (3, 3)])
def test_decode_threads_default_to_one_per_available_core(configured, expected):
    engine = ClassifierEngine(engine_config("unused", decode_threads=configured))
    assert engine.decode_threads == expected


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="Linux only")
def test_available_cpus_follows_the_affinity_mask():
    """A container or taskset narrowing the process to one core gives one decode thread."""
    code = (
        "import os; os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]}); "
        "from safegen.moderation.engine import available_cpus; print(available_cpus())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "1"


def test_every_engine_setting_reaches_the_engine_in_its_documented_unit(monkeypatch, tmp_path):
    """Each SAFEGEN_ variable of the README's table, set to a value unlike its default."""
    environment = {
        "SAFEGEN_NSFW_MODEL": "/models/classifier", "SAFEGEN_MODEL_CACHE_DIR": str(tmp_path),
        "SAFEGEN_DEVICE": "cpu", "SAFEGEN_BACKEND": "onnx", "SAFEGEN_PRECISION": "int8",
        "SAFEGEN_FAST_DECODE": "false", "SAFEGEN_MAX_BATCH_SIZE": "7",
        "SAFEGEN_MAX_BATCH_WAIT_MS": "250", "SAFEGEN_MAX_QUEUE_IMAGES": "99",
        "SAFEGEN_MAX_QUEUE_WAIT_S": "12.5", "SAFEGEN_DECODE_THREADS": "3",
        "SAFEGEN_TORCH_THREADS": "5", "SAFEGEN_INFERENCE_TIMEOUT_S": "41",
        "SAFEGEN_DEVICE_DECODE": "true", "SAFEGEN_AUTO_MAX_DRIFT": "0.05",
        "SAFEGEN_AUTO_BATCH_SIZE": "false", "SAFEGEN_MAX_IMAGE_BYTES": "123456",
        "SAFEGEN_MAX_IMAGE_PIXELS": "654321", "SAFEGEN_ALLOWED_FORMATS": "PNG,JPEG",
        "SAFEGEN_DECODE_MEMORY_MB": "300", "SAFEGEN_MAX_FRAMES": "4",
        "SAFEGEN_MAX_ANIMATION_FRAMES": "50", "SAFEGEN_MAX_ANIMATION_PIXELS": "7000000",
        "SAFEGEN_RESULT_CACHE_SIZE": "11",
    }
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    config = EngineConfig.from_settings(Settings())
    assert config == EngineConfig(
        model="/models/classifier", cache_dir=tmp_path, device="cpu", backend="onnx",
        precision="int8", fast_decode=False, max_batch_size=7, max_batch_wait_s=0.25,
        max_queue_images=99, max_queue_wait_s=12.5, decode_threads=3, torch_threads=5,
        inference_timeout_s=41.0, device_decode=True, auto_max_drift=0.05,
        auto_batch_size=False,
        limits=ImageLimits(max_bytes=123456, max_pixels=654321, formats=("PNG", "JPEG")),
        decode_memory_bytes=300 * 1024 * 1024,
        frames=FrameLimits(max_frames=4, max_animation_frames=50, max_animation_pixels=7_000_000),
        result_cache_size=11,
    )

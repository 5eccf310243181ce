"""Inference backends: parity of every CPU path against torch fp32, the ONNX export cache, and the
``auto`` choice of backend and precision."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest

from safegen.errors import ModelUnavailable
from safegen.imaging import ImageLimits, decode_for_model
from safegen.moderation import backends, onnx_backend
from safegen.moderation.backends import PARITY_BOUNDS, build_backend, select_backend
from safegen.moderation.loading import LoadedClassifier, load_classifier
from tests.support import images
from tests.support.tiny_models import build_full_vit_b16

CPU_PATHS = [("torch", "bf16"), ("torch", "fp16"), ("onnx", "fp32"), ("onnx", "int8")]


def photo_batch(count: int) -> np.ndarray:
    """Decoded photo-like JPEGs plus one flat and one noise image: the pixels the engine ships."""
    pixels = [
        decode_for_model(images.jpeg(seed, (320, 480)), ImageLimits(), (224, 224), fast=True)
        for seed in range(count - 2)
    ]
    rng = np.random.default_rng(0)
    pixels += [np.full((224, 224, 3), 128, np.uint8), rng.integers(0, 256, (224, 224, 3), np.uint8)]
    return np.stack(pixels)


@pytest.fixture(scope="module")
def tiny_loaded(tiny_vit_dir: Path) -> LoadedClassifier:
    return load_classifier(str(tiny_vit_dir))


@pytest.fixture(scope="module")
def batch() -> np.ndarray:
    return photo_batch(6)


def drift(loaded: LoadedClassifier, batch: np.ndarray, name: str, precision: str,
          cache: Path) -> float:
    reference = build_backend(copy.deepcopy(loaded), "torch", "cpu", "fp32").predict(batch)
    # a copy: the torch backend converts the model it is given to its precision in place
    probs = build_backend(copy.deepcopy(loaded), name, "cpu", precision, cache).predict(batch)
    assert probs.shape == reference.shape
    assert probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-3)
    return float(np.abs(probs - reference).max())


@pytest.mark.parametrize(("name", "precision"), CPU_PATHS)
def test_cpu_paths_within_stated_bound_tiny(tiny_loaded, batch, tmp_path, name, precision):
    found = drift(tiny_loaded, batch, name, precision, tmp_path)
    assert found <= PARITY_BOUNDS[f"{name}-{precision}"], found


@pytest.mark.slow
def test_cpu_paths_within_stated_bound_full_size(tmp_path):
    """ViT-B/16's depth amplifies drift; fp16 on CPU is skipped here (emulated, minutes)."""
    loaded = load_classifier(str(build_full_vit_b16(tmp_path / "vit-b16")))
    batch = photo_batch(4)
    found = {
        f"{name}-{precision}": drift(loaded, batch, name, precision, tmp_path / "cache")
        for name, precision in CPU_PATHS
        if precision != "fp16"
    }
    print("max |dp| against torch fp32, ViT-B/16:", found)
    for path, value in found.items():
        assert value <= PARITY_BOUNDS[path], found


def test_onnx_batch_axis_is_dynamic(tiny_loaded, batch, tmp_path):
    backend = build_backend(tiny_loaded, "onnx", "cpu", "fp32", tmp_path)
    whole = backend.predict(batch)
    for size in (1, 3):
        np.testing.assert_allclose(backend.predict(batch[:size]), whole[:size], atol=1e-6)


@pytest.fixture
def count_exports(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Precisions built, in order: ``_export`` for fp32/fp16, ``_quantize`` for int8."""
    calls: list[str] = []
    export, quantize = onnx_backend._export, onnx_backend._quantize

    def counting_export(loaded: LoadedClassifier, target: Path, precision: str) -> None:
        calls.append(precision)
        export(loaded, target, precision)

    def counting_quantize(source: Path, target: Path) -> None:
        calls.append("int8")
        quantize(source, target)

    monkeypatch.setattr(onnx_backend, "_export", counting_export)
    monkeypatch.setattr(onnx_backend, "_quantize", counting_quantize)
    return calls


def test_export_is_cached_and_reused(tiny_loaded, batch, tmp_path, count_exports):
    first = onnx_backend.OnnxBackend(tiny_loaded, "cpu", "fp32", tmp_path)
    mtime = first.path.stat().st_mtime_ns
    second = onnx_backend.OnnxBackend(tiny_loaded, "cpu", "fp32", tmp_path)
    assert count_exports == ["fp32"]
    assert second.path == first.path
    assert second.path.stat().st_mtime_ns == mtime
    assert first.path.parent == tmp_path / "safegen-onnx"
    assert not [p for p in first.path.parent.iterdir() if p.name.startswith(".export-")]
    np.testing.assert_array_equal(first.predict(batch), second.predict(batch))


def test_cache_key_changes_with_precision_and_weights(tiny_loaded, tmp_path, count_exports):
    assert onnx_backend.cache_key(tiny_loaded, "fp32") != onnx_backend.cache_key(
        tiny_loaded, "int8"
    )
    fp32 = onnx_backend.ensure_exported(tiny_loaded, "fp32", tmp_path)
    int8 = onnx_backend.ensure_exported(tiny_loaded, "int8", tmp_path)
    assert fp32 != int8
    assert count_exports == ["fp32", "int8"]  # int8 is quantised from the cached fp32 file
    assert onnx_backend.ensure_exported(tiny_loaded, "int8", tmp_path) == int8
    assert count_exports == ["fp32", "int8"]
    changed = copy.copy(tiny_loaded)
    changed.model = copy.deepcopy(tiny_loaded.model)
    import torch

    with torch.no_grad():
        changed.model.classifier.bias[0] += 0.5  # type: ignore[attr-defined]
    assert onnx_backend.cache_key(changed, "fp32") != onnx_backend.cache_key(tiny_loaded, "fp32")


def test_corrupted_cache_file_is_rebuilt(tiny_loaded, batch, tmp_path, count_exports):
    path = onnx_backend.OnnxBackend(tiny_loaded, "cpu", "fp32", tmp_path).path
    expected = onnx_backend.OnnxBackend(tiny_loaded, "cpu", "fp32", tmp_path).predict(batch)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # truncated by a crash
    rebuilt = onnx_backend.OnnxBackend(tiny_loaded, "cpu", "fp32", tmp_path)
    assert count_exports == ["fp32", "fp32"]
    np.testing.assert_allclose(rebuilt.predict(batch), expected, atol=1e-6)


def test_unloadable_file_with_matching_digest_is_rebuilt(tiny_loaded, tmp_path, count_exports):
    """A file whose recorded digest matches but which onnxruntime refuses is exported again."""
    path = onnx_backend.ensure_exported(tiny_loaded, "fp32", tmp_path)
    path.write_bytes(b"not an onnx model")
    sidecar = path.with_suffix(".json")
    meta = json.loads(sidecar.read_text())
    meta["sha256"] = onnx_backend._file_sha256(path)
    sidecar.write_text(json.dumps(meta))
    backend = onnx_backend.OnnxBackend(tiny_loaded, "cpu", "fp32", tmp_path)
    assert count_exports == ["fp32", "fp32"]
    assert backend.predict(photo_batch(3)).shape == (3, 2)


def test_default_cache_root(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert onnx_backend.default_cache_root(None) == tmp_path / "safegen" / "onnx"
    assert onnx_backend.default_cache_root(tmp_path / "hf") == tmp_path / "hf" / "safegen-onnx"


@pytest.mark.parametrize(
    ("flags", "expected"),
    [("fpu avx512f avx512_bf16 avx512_vnni", True), ("fpu amx_bf16", True),
     ("fpu avx2 avx512f", False)],
)
def test_cpu_bf16_detection(tmp_path, flags, expected):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
    assert backends.cpu_has_native_bf16(cpuinfo) is expected
    assert backends.cpu_has_native_bf16(tmp_path / "missing") is False


@pytest.mark.parametrize(
    ("bf16", "ort", "request_", "expected"),
    [
        (True, True, ("auto", "cpu", "auto"), ("torch", "bf16")),  # fastest here, within bound
        (False, True, ("auto", "cpu", "auto"), ("onnx", "fp32")),
        (False, False, ("auto", "cpu", "auto"), ("torch", "fp32")),
        (True, True, ("auto", "cuda", "auto"), ("torch", "fp16")),
        (True, True, ("torch", "cpu", "auto"), ("torch", "bf16")),
        (False, True, ("torch", "cpu", "auto"), ("torch", "fp32")),
        (True, True, ("onnx", "cpu", "auto"), ("onnx", "fp32")),
        (True, True, ("onnx", "cuda", "auto"), ("onnx", "fp16")),
        (True, True, ("auto", "cpu", "fp32"), ("onnx", "fp32")),
        (True, False, ("auto", "cpu", "fp32"), ("torch", "fp32")),
        (True, True, ("auto", "cpu", "int8"), ("onnx", "int8")),  # int8 only when asked
        (True, True, ("auto", "cuda", "fp32"), ("torch", "fp32")),
    ],
)
def test_auto_selection(monkeypatch, bf16, ort, request_, expected):
    monkeypatch.setattr(backends, "cpu_has_native_bf16", lambda: bf16)
    monkeypatch.setattr(backends, "onnxruntime_available", lambda: ort)
    assert select_backend(*request_) == expected


@pytest.mark.parametrize(("backend", "precision"), [("onnx", "bf16"), ("torch", "int8")])
def test_unsupported_combinations_are_refused(backend, precision):
    with pytest.raises(ModelUnavailable, match=f"SAFEGEN_PRECISION={precision}"):
        select_backend(backend, "cpu", precision)


def test_onnx_without_onnxruntime_says_what_to_install(monkeypatch, tiny_loaded):
    monkeypatch.setattr(backends, "onnxruntime_available", lambda: False)
    with pytest.raises(ModelUnavailable, match=r"pip install safegen\[onnx\]") as caught:
        build_backend(tiny_loaded, "onnx", "cpu", "fp32")
    assert "\n" not in caught.value.message


def test_cuda_bucket_padding():
    assert backends.bucket_for(1) == 1
    assert backends.bucket_for(5) == 8
    assert backends.bucket_for(32) == 32
    assert backends.bucket_for(2000) == 2000  # beyond the largest bucket: no padding

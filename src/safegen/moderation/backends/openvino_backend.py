"""OpenVINO inference on the CPU: the classifier converted to OpenVINO IR once, cached, then reused.

Conversion (``ov.convert_model`` of the same uint8-in, probabilities-out graph as the ONNX export)
runs at first use and is cached (``artifact_cache``) keyed by the model's identity and the
versions that shape the file. One float32 IR serves fp32 and bf16: the precision is the CPU
plugin's ``INFERENCE_PRECISION_HINT`` at compile time (its default is bf16 on CPUs with native
bf16, so fp32 is asked for explicitly). int8 is NNCF post-training quantisation of that IR,
calibrated on generated images and cached as its own IR (opt-in, needs the ``int8`` extra).

OpenVINO's converter and NNCF send usage telemetry unless told otherwise; a self-hosted service
must not, so ``_no_telemetry`` turns it off for this process before either is imported.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from safegen.moderation.backends import artifact_cache
from safegen.moderation.backends.export_graph import example_pixels, pixels_to_probabilities
from safegen.moderation.backends.spec import (
    BackendSpec,
    BuildRequest,
    cpu_has_int8_dot_product,
    cpu_has_native_bf16,
    module_available,
)
from safegen.moderation.loading import LoadedClassifier

logger = logging.getLogger("safegen.moderation")

FORMAT_VERSION = 1  # bump when the converted graph or the quantisation recipe changes
SUFFIXES = (".xml", ".bin")  # the IR: graph and weights, read back as a pair
CALIBRATION_IMAGES = 32
CALIBRATION_SEED = 0
HINTS = {"fp32": "f32", "bf16": "bf16"}  # SAFEGEN_PRECISION -> INFERENCE_PRECISION_HINT


def _no_telemetry() -> None:
    """Keep OpenVINO's converter and NNCF from sending usage events from this process.

    Both send them to an analytics service by default (no consent file means consent) and write a
    client id under ``~/intel``; without the ``openvino_telemetry`` module both fall back to their
    own no-op stubs. Left alone when the host application imported it itself.
    """
    sys.modules.setdefault("openvino_telemetry", None)  # type: ignore[arg-type]
    os.environ.setdefault("NNCF_CI", "1")  # NNCF's own switch for its stub


def default_cache_root(cache_dir: Path | None) -> Path:
    """Under the model cache dir when one is configured, else ``~/.cache/safegen/openvino``."""
    return artifact_cache.cache_root(cache_dir, "openvino")


def cache_key(loaded: LoadedClassifier, kind: str) -> str:
    """Everything that decides the IR's bytes, hashed (``kind``: ``float`` or ``int8``)."""
    import openvino
    import torch
    import transformers

    facts: dict[str, object] = {
        **artifact_cache.model_facts(loaded),
        "kind": kind,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "openvino": openvino.get_version(),
        "format": FORMAT_VERSION,
    }
    if kind == "int8":
        import nncf

        facts.update(nncf=nncf.__version__, calibration=(CALIBRATION_IMAGES, CALIBRATION_SEED),
                     smooth_quant=False)
    return artifact_cache.digest_of(facts)


def _convert(loaded: LoadedClassifier, target: Path) -> None:
    """Trace the uint8-in graph and save it as float32 IR (no fp16 weight compression)."""
    _no_telemetry()
    import openvino as ov
    import torch

    example = example_pixels(loaded)
    _, height, width, _ = example.shape
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore")  # tracer warnings about Python control flow: expected
        model = ov.convert_model(
            pixels_to_probabilities(loaded), example_input=example,
            input=[(ov.PartialShape([-1, height, width, 3]), ov.Type.u8)],  # dynamic batch axis
        )
    ov.save_model(model, str(target), compress_to_fp16=False)


def calibration_images(size: tuple[int, int], count: int, seed: int) -> list[np.ndarray]:
    """Photo-like ``(1, H, W, 3)`` uint8 images: smooth colour fields with edges and grain.

    Post-training quantisation needs the activation ranges of natural images; uniform noise would
    set ranges no photo reaches. These are generated, so no data set is shipped or downloaded.
    """
    from PIL import Image

    width, height = size
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(count):
        cells = int(rng.integers(2, 9))
        coarse = rng.integers(0, 256, (cells, cells, 3), dtype=np.uint8)
        small = Image.fromarray(coarse)
        field = np.asarray(small.resize((width, height), Image.Resampling.BILINEAR))
        edges = np.asarray(small.resize((width, height), Image.Resampling.NEAREST))
        mix = rng.uniform(0.0, 0.5)
        grain = rng.normal(0.0, rng.uniform(2, 20), (height, width, 3))
        pixels = (1 - mix) * field + mix * edges + grain
        images.append(np.clip(pixels, 0, 255).astype(np.uint8)[None])
    return images


def _quantize(float_ir: Path, target: Path, size: tuple[int, int]) -> None:
    """NNCF post-training int8 quantisation (transformer preset, attention kept fp), SmoothQuant
    off: on ViT-B/16 it made every image drift more (worst 0.098 against 0.055 without it, AMX
    host; docs/performance.md)."""
    _no_telemetry()
    import nncf
    import openvino as ov
    from nncf.quantization.advanced_parameters import (
        AdvancedQuantizationParameters,
        AdvancedSmoothQuantParameters,
    )

    model = ov.Core().read_model(str(float_ir))
    dataset = nncf.Dataset(calibration_images(size, CALIBRATION_IMAGES, CALIBRATION_SEED))
    quiet = logging.getLogger("nncf")
    level = quiet.level
    quiet.setLevel(logging.WARNING)  # progress bars and per-step chatter
    try:
        no_smooth_quant = AdvancedQuantizationParameters(
            smooth_quant_alphas=AdvancedSmoothQuantParameters(matmul=-1)
        )
        quantized = nncf.quantize(model, dataset, model_type=nncf.ModelType.TRANSFORMER,
                                  subset_size=CALIBRATION_IMAGES,
                                  advanced_parameters=no_smooth_quant)
    finally:
        quiet.setLevel(level)
    ov.save_model(quantized, str(target), compress_to_fp16=False)


def ensure_converted(loaded: LoadedClassifier, kind: str, cache_dir: Path | None) -> Path:
    """Return the cached IR (``.xml``; ``.bin`` beside it) of ``kind``, converting if needed."""
    root = default_cache_root(cache_dir)
    # int8 is quantised from the cached float IR (taken first: the lock is not re-entrant).
    source = ensure_converted(loaded, "float", cache_dir) if kind == "int8" else None
    key = cache_key(loaded, kind)

    def build(target: Path) -> None:
        if source is not None:
            _quantize(source, target, loaded.preprocessing.size)
        else:
            _convert(loaded, target)

    return artifact_cache.cached_build(
        root, f"classifier-{kind}-{key[:24]}", SUFFIXES, build,
        what=f"OpenVINO IR ({kind})", meta={"key": key, "model": loaded.name},
    )


class OpenVinoBackend:
    """A compiled OpenVINO model on the CPU plugin, run by the engine's one model thread."""

    name = "openvino"

    def __init__(
        self, loaded: LoadedClassifier, precision: str, cache_dir: Path | None, threads: int
    ) -> None:
        _no_telemetry()
        import openvino as ov

        self.device = "cpu"
        self.precision = precision
        kind = "int8" if precision == "int8" else "float"
        # int8 leaves some operations in float: bf16 for them where the CPU has it.
        hint = HINTS.get(precision) or ("bf16" if cpu_has_native_bf16() else "f32")
        config: dict[str, Any] = {
            "INFERENCE_PRECISION_HINT": hint,
            # One request at a time (the model thread), every core on it.
            "PERFORMANCE_HINT": "LATENCY",
            "NUM_STREAMS": 1,
            "INFERENCE_NUM_THREADS": threads or (os.cpu_count() or 1),
        }
        core = ov.Core()
        path = ensure_converted(loaded, kind, cache_dir)
        try:
            compiled = core.compile_model(core.read_model(str(path)), "CPU", config)
        except Exception as exc:  # readable but unusable IR (e.g. written by another version)
            logger.warning("cached OpenVINO IR %s does not load (%s); converting again", path, exc)
            artifact_cache.discard(path, SUFFIXES)
            path = ensure_converted(loaded, kind, cache_dir)
            compiled = core.compile_model(core.read_model(str(path)), "CPU", config)
        self.path = path
        self._request = compiled.create_infer_request()

    def predict(self, batch: np.ndarray) -> np.ndarray:
        # share_inputs: OpenVINO reads the numpy buffer in place (no copy of the batch)
        self._request.infer({0: np.ascontiguousarray(batch)}, share_inputs=True)
        return np.array(self._request.get_output_tensor(0).data, dtype=np.float32)  # a copy


def _missing(device: str, precision: str) -> str | None:
    if device != "cpu":
        return "SAFEGEN_BACKEND=openvino runs on the CPU: set SAFEGEN_DEVICE=cpu"
    if not module_available("openvino"):
        return "SAFEGEN_BACKEND=openvino needs OpenVINO: pip install openvino"
    if precision == "int8" and not module_available("nncf"):
        return "SAFEGEN_PRECISION=int8 with OpenVINO needs NNCF: pip install safegen[int8]"
    return None


def _worth_measuring(device: str, precision: str) -> bool:
    if precision == "int8":
        # Its bound held on a VNNI host (max |dp| 0.016); on an AVX2 host without VNNI ViT-B/16
        # drifted 0.27, far past it (docs/performance.md): never chosen there unless named.
        return cpu_has_int8_dot_product()
    return precision != "bf16" or cpu_has_native_bf16()  # else the hint falls back to f32


def _versions() -> dict[str, str]:
    _no_telemetry()
    import openvino

    return {"openvino": openvino.get_version()}


def _build(loaded: LoadedClassifier, request: BuildRequest) -> OpenVinoBackend:
    return OpenVinoBackend(loaded, request.precision, request.cache_dir, request.threads)


SPEC = BackendSpec(
    name="openvino",
    # Max |delta p| against torch fp32 (tests/unit/test_backends.py, docs/performance.md).
    # int8 (static, NNCF): photos stay within 1.4e-2, but a flat grey image drifts 0.055 on AMX
    # and 0.25 on VNNI or AVX2 kernels, so its bound keeps it out of `auto` (max drift 5e-2).
    bounds={"fp32": 1e-4, "bf16": 1e-2, "int8": 0.3},
    factory=_build,
    missing=_missing,
    worth_measuring=_worth_measuring,
    versions=_versions,
    rank=20,
)

"""onnxruntime inference: the classifier exported to ONNX once, cached on disk, then reused.

The exported graph takes the same ``(N, H, W, 3)`` uint8 batch as the torch backend and returns
probabilities (``export_graph``). Export happens at first use (a few seconds for ViT-B/16) and the
file is cached (``artifact_cache``) under a key made of the model's identity, the precision and
the versions of every library that shapes the file. int8 is dynamic quantisation of the cached
fp32 file (opt-in: its drift is a model-quality decision).
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import numpy as np

from safegen.errors import ModelUnavailable
from safegen.moderation.backends import artifact_cache
from safegen.moderation.backends.export_graph import example_pixels, pixels_to_probabilities
from safegen.moderation.backends.spec import BackendSpec, BuildRequest, module_available
from safegen.moderation.loading import LoadedClassifier

logger = logging.getLogger("safegen.moderation")

FORMAT_VERSION = 2  # bump when the exported graph changes (wrapper, opset, quantisation recipe)
OPSET = 17
SUFFIXES = (".onnx",)
INSTALL_HINT = "pip install safegen[onnx]"


def default_cache_root(cache_dir: Path | None) -> Path:
    """Under the model cache dir when one is configured, else ``~/.cache/safegen/onnx``."""
    return artifact_cache.cache_root(cache_dir, "onnx")


def cache_key(loaded: LoadedClassifier, precision: str) -> str:
    """Everything that decides the exported file's bytes, hashed."""
    import onnxruntime
    import torch
    import transformers

    return artifact_cache.digest_of({
        **artifact_cache.model_facts(loaded),
        "precision": precision,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "onnxruntime": onnxruntime.__version__,
        "format": FORMAT_VERSION,
        "opset": OPSET,
    })


def _export(loaded: LoadedClassifier, target: Path, precision: str) -> None:
    """Trace the model with the legacy TorchScript exporter (offline, no onnxscript needed)."""
    import torch

    # fp16 is for the CUDA execution provider; untested here (no GPU)
    graph = pixels_to_probabilities(loaded, half=precision == "fp16")
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore")  # tracer warnings about Python control flow: expected
        torch.onnx.export(
            graph, (example_pixels(loaded),), str(target), dynamo=False, opset_version=OPSET,
            input_names=["pixels"], output_names=["probs"],
            dynamic_axes={"pixels": {0: "batch"}, "probs": {0: "batch"}},
        )


def _quantize(source: Path, target: Path) -> None:
    """int8 dynamic quantisation of the MatMul/Gemm weights (activations quantised per batch).

    The patch-embedding Conv stays fp32: quantising it too gained nothing measurable here and
    raised ViT-B/16's max |dp| from 0.013 to 0.08 (docs/performance.md).
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root_logger = logging.getLogger()
    mute = logging.Filter("nothing")  # the quantiser chats on the root logger; mute only that
    root_logger.addFilter(mute)
    try:
        quantize_dynamic(source, target, weight_type=QuantType.QInt8,
                         op_types_to_quantize=["MatMul", "Gemm"])
    finally:
        root_logger.removeFilter(mute)


def ensure_exported(loaded: LoadedClassifier, precision: str, cache_dir: Path | None) -> Path:
    """Return the cached ONNX file for this model and precision, exporting it if needed."""
    root = default_cache_root(cache_dir)
    # int8 is quantised from the cached fp32 export (taken first: the lock is not re-entrant).
    fp32 = ensure_exported(loaded, "fp32", cache_dir) if precision == "int8" else None
    key = cache_key(loaded, precision)

    def build(target: Path) -> None:
        if fp32 is not None:
            _quantize(fp32, target)
        else:
            _export(loaded, target, precision)

    return artifact_cache.cached_build(
        root, f"classifier-{precision}-{key[:24]}", SUFFIXES, build,
        what=f"ONNX export ({precision})", meta={"key": key, "model": loaded.name},
    )


class OnnxBackend:
    """onnxruntime inference session over the cached export (CPU; CUDA provider when asked)."""

    name = "onnx"

    def __init__(
        self,
        loaded: LoadedClassifier,
        device: str,
        precision: str,
        cache_dir: Path | None = None,
        threads: int = 0,
    ) -> None:
        import onnxruntime as ort

        self.device = device
        self.precision = precision
        providers = ["CPUExecutionProvider"]
        if device == "cuda":  # untested here: needs the onnxruntime-gpu wheel and a GPU
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise ModelUnavailable(_NEEDS_GPU_BUILD)
            providers.insert(0, "CUDAExecutionProvider")
        options = ort.SessionOptions()
        # One model thread calls run(); all cores go to intra-op parallelism. No spinning: idle
        # intra-op threads would burn the cores the decode threads need between batches.
        options.intra_op_num_threads = threads or (os.cpu_count() or 1)
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        path = ensure_exported(loaded, precision, cache_dir)
        try:
            self._session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as exc:  # readable but unusable file (e.g. written by another version)
            logger.warning("cached ONNX file %s does not load (%s); exporting again", path, exc)
            artifact_cache.discard(path, SUFFIXES)
            path = ensure_exported(loaded, precision, cache_dir)
            self._session = ort.InferenceSession(str(path), options, providers=providers)
        self.path = path

    def predict(self, batch: np.ndarray) -> np.ndarray:
        (probs,) = self._session.run(["probs"], {"pixels": np.ascontiguousarray(batch)})
        return np.asarray(probs, dtype=np.float32)


_NEEDS_GPU_BUILD = "SAFEGEN_BACKEND=onnx on CUDA needs the GPU build: pip install onnxruntime-gpu"


def _missing(device: str, precision: str) -> str | None:
    if not module_available("onnxruntime", "onnx"):  # onnxruntime runs, onnx exports/quantises
        return f"SAFEGEN_BACKEND=onnx needs onnxruntime: {INSTALL_HINT}"
    if device == "cuda":
        import onnxruntime as ort

        if "CUDAExecutionProvider" not in ort.get_available_providers():
            return _NEEDS_GPU_BUILD
    return None


def _worth_measuring(device: str, precision: str) -> bool:
    # fp16 only has fast kernels on CUDA; int8 (dynamic quantisation) only on the CPU.
    return {"fp32": True, "fp16": device == "cuda", "int8": device == "cpu"}[precision]


def _versions() -> dict[str, str]:
    import onnxruntime

    return {"onnxruntime": onnxruntime.__version__}


def _build(loaded: LoadedClassifier, request: BuildRequest) -> OnnxBackend:
    return OnnxBackend(loaded, request.device, request.precision, request.cache_dir,
                       threads=request.threads)


SPEC = BackendSpec(
    name="onnx",
    bounds={"fp32": 1e-4, "fp16": 5e-3, "int8": 5e-2},  # fp16: CUDA only, untested (no GPU here)
    factory=_build,
    missing=_missing,
    worth_measuring=_worth_measuring,
    versions=_versions,
    rank=10,
)

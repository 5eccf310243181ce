"""onnxruntime inference: the classifier exported to ONNX once, cached on disk, then reused.

The exported graph takes the same ``(N, H, W, 3)`` uint8 batch as the torch backend and returns
probabilities: layout change, normalisation and softmax are folded into the graph, so the model
thread hands raw pixels to onnxruntime (measured as fast as normalising in numpy, and one copy
fewer). Export happens at first use (a few seconds for ViT-B/16) and the file is cached under a
key made of the model's identity (source path and a digest of its weights), the precision and the
versions of every library that shapes the file; a cached file is checked against its recorded
SHA-256 before use, and a missing or corrupt one is rebuilt.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import os
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from safegen.errors import ModelUnavailable
from safegen.moderation.loading import LoadedClassifier

logger = logging.getLogger("safegen.moderation")

FORMAT_VERSION = 2  # bump when the exported graph changes (wrapper, opset, quantisation recipe)
OPSET = 17


def default_cache_root(cache_dir: Path | None) -> Path:
    """Under the model cache dir when one is configured, else ``~/.cache/safegen/onnx``."""
    if cache_dir is not None:
        return Path(cache_dir) / "safegen-onnx"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "safegen" / "onnx"


def weights_digest(model: object) -> str:
    """SHA-256 over every tensor of the state dict (about 0.4 s for ViT-B/16's 344 MB)."""
    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):  # type: ignore[attr-defined]
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
        raw = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(raw.view(torch.uint8).numpy())  # bytes, whatever the dtype (bf16 too)
    return digest.hexdigest()


def cache_key(loaded: LoadedClassifier, precision: str) -> str:
    """Everything that decides the exported file's bytes, hashed."""
    import onnxruntime
    import torch
    import transformers

    source = getattr(loaded.model.config, "_name_or_path", "") or loaded.name  # type: ignore[attr-defined]
    facts = {
        "source": str(source),
        "weights": weights_digest(loaded.model),
        "preprocessing": repr(loaded.preprocessing),
        "precision": precision,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "onnxruntime": onnxruntime.__version__,
        "format": FORMAT_VERSION,
        "opset": OPSET,
    }
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def _export_lock(root: Path) -> Iterator[None]:
    """One exporter per cache dir across processes (workers starting together export once)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: atomic renames still keep the cache consistent
        yield
        return
    with (root / ".lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _export(loaded: LoadedClassifier, target: Path, precision: str) -> None:
    """Trace the model with the legacy TorchScript exporter (offline, no onnxscript needed)."""
    import torch

    from safegen.moderation.backends import normalisation

    class Wrapped(torch.nn.Module):
        def __init__(self, model: torch.nn.Module, dtype: torch.dtype) -> None:
            super().__init__()
            self.model, self.dtype = model, dtype
            scale, shift = normalisation(loaded.preprocessing)
            # plain attributes: traced as graph constants (x * scale + shift per channel)
            self.scale = torch.tensor(scale).view(1, 3, 1, 1)
            self.shift = torch.tensor(shift).view(1, 3, 1, 1)

        def forward(self, pixels: torch.Tensor) -> torch.Tensor:
            x = pixels.permute(0, 3, 1, 2).float() * self.scale + self.shift
            logits = self.model(pixel_values=x.to(self.dtype)).logits
            return torch.softmax(logits.float(), dim=-1)

    model = copy.deepcopy(loaded.model).float().eval()  # type: ignore[attr-defined]
    dtype = torch.float32
    if precision == "fp16":  # for the CUDA execution provider; untested here (no GPU)
        model, dtype = model.half(), torch.float16
    width, height = loaded.preprocessing.size
    example = torch.zeros((2, height, width, 3), dtype=torch.uint8)
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore")  # tracer warnings about Python control flow: expected
        torch.onnx.export(
            Wrapped(model, dtype), (example,), str(target), dynamo=False, opset_version=OPSET,
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
    root.mkdir(parents=True, exist_ok=True)
    # int8 is quantised from the cached fp32 export (taken first: the lock is not re-entrant).
    fp32 = ensure_exported(loaded, "fp32", cache_dir) if precision == "int8" else None
    key = cache_key(loaded, precision)
    target = root / f"classifier-{precision}-{key[:24]}.onnx"
    sidecar = target.with_suffix(".json")
    with _export_lock(root):
        if target.exists() and sidecar.exists():
            recorded = json.loads(sidecar.read_text()).get("sha256")
            if recorded == _file_sha256(target):
                return target
            logger.warning("cached ONNX file %s is corrupt; exporting again", target.name)
        logger.info("exporting the classifier to ONNX (%s), once per model and version", precision)
        with tempfile.TemporaryDirectory(dir=root, prefix=".export-") as scratch:
            staged = Path(scratch) / "model.onnx"
            if fp32 is not None:
                _quantize(fp32, staged)
            else:
                _export(loaded, staged, precision)
            meta = {"sha256": _file_sha256(staged), "key": key, "model": loaded.name}
            staged.replace(target)  # atomic: readers see the old file or the whole new one
            staged_meta = Path(scratch) / "meta.json"
            staged_meta.write_text(json.dumps(meta))
            staged_meta.replace(sidecar)
    return target


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
                raise ModelUnavailable(
                    "SAFEGEN_BACKEND=onnx on CUDA needs the GPU build: pip install onnxruntime-gpu"
                )
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
            path.unlink(missing_ok=True)
            path = ensure_exported(loaded, precision, cache_dir)
            self._session = ort.InferenceSession(str(path), options, providers=providers)
        self.path = path

    def predict(self, batch: np.ndarray) -> np.ndarray:
        (probs,) = self._session.run(["probs"], {"pixels": np.ascontiguousarray(batch)})
        return np.asarray(probs, dtype=np.float32)

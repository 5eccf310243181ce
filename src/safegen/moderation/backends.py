"""Inference backends: uint8 image batches in, class probabilities out, and the choice between them.

Normalisation happens inside the backend (on the device, or inside the ONNX graph), so the host
ships uint8 pixels (4x less data than float32) and the decode threads do no float work.

``build_backend`` picks a backend and a precision. ``auto`` takes the fastest path whose parity
bound holds, measured on a 2-core AVX-512 BF16 CPU with ViT-B/16 (docs/performance.md): torch bf16
where the CPU computes bf16 natively, else onnxruntime fp32 when installed, else torch
fp32; fp16 on CUDA. int8 is never chosen automatically: its drift is a model-quality decision.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from safegen.errors import ModelUnavailable
from safegen.moderation.loading import LoadedClassifier, Preprocessing

if TYPE_CHECKING:
    import torch

logger = logging.getLogger("safegen.moderation")

# Max |delta p| against torch fp32 on the same decoded pixels, per "<backend>-<precision>" path.
# Stated here, tested in tests/unit/test_backends.py (and against transformers in test_parity.py).
PARITY_BOUNDS = {
    "torch-fp32": 1e-4,
    "torch-bf16": 1e-2,
    "torch-fp16": 5e-3,
    "onnx-fp32": 1e-4,
    "onnx-fp16": 5e-3,  # CUDA only; untested here (no GPU on the development machines)
    "onnx-int8": 5e-2,  # opt-in: dynamic quantisation of the weights
}
ONNX_PRECISIONS = ("fp32", "fp16", "int8")
TORCH_PRECISIONS = ("fp32", "bf16", "fp16")
# Batch sizes a CUDA batch is padded up to, so the shapes repeat (cuDNN/compile/CUDA-graph caches).
CUDA_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Backend(Protocol):
    """Runs the classifier on a ``(N, H, W, 3)`` uint8 batch, returns ``(N, labels)`` float32."""

    name: str
    precision: str

    def predict(self, batch: np.ndarray) -> np.ndarray: ...


def cpu_has_native_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """True where the CPU computes bf16 in hardware (AVX-512 BF16 or AMX); else bf16 is slower."""
    try:
        flags = cpuinfo.read_text(encoding="ascii", errors="ignore")
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def normalisation(prep: Preprocessing) -> tuple[list[float], list[float]]:
    """Per-channel ``(scale, shift)`` with ``x * scale + shift == (x * rescale - mean) / std``."""
    scale = [prep.rescale_factor / s for s in prep.std]
    shift = [-m / s for m, s in zip(prep.mean, prep.std, strict=True)]
    return scale, shift


def onnxruntime_available() -> bool:
    """The ``onnx`` extra: onnxruntime to run, onnx to export and quantise."""
    return all(importlib.util.find_spec(name) is not None for name in ("onnxruntime", "onnx"))


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelUnavailable("SAFEGEN_DEVICE=cuda but no CUDA device is visible")
    return device


def select_backend(backend: str, device: str, precision: str) -> tuple[str, str]:
    """Resolve ``auto`` in ``backend`` and ``precision`` to a concrete ``(backend, precision)``."""
    if backend not in ("auto", "torch", "onnx"):
        raise ModelUnavailable(f"unknown SAFEGEN_BACKEND={backend}; use auto, torch or onnx")
    if precision == "auto":
        if device == "cuda":
            precision = "fp16"
        elif backend != "onnx" and cpu_has_native_bf16():
            precision = "bf16"  # fastest path here within its bound (docs/performance.md)
        else:
            precision = "fp32"
    if backend == "auto":
        # torch eager on CUDA (pinned copies, buckets, compile); on CPU onnxruntime beats torch at
        # fp32 (about 2x here) and is the only int8 path; bf16 is torch-only.
        wants_onnx = precision == "int8" or (precision == "fp32" and device == "cpu")
        backend = "onnx" if wants_onnx and onnxruntime_available() else "torch"
    supported = ONNX_PRECISIONS if backend == "onnx" else TORCH_PRECISIONS
    if precision not in supported:
        raise ModelUnavailable(
            f"SAFEGEN_PRECISION={precision} is not supported by the {backend} backend; "
            f"use one of: {', '.join(supported)}"
        )
    return backend, precision


def build_backend(
    loaded: LoadedClassifier,
    backend: str,
    device: str,
    precision: str,
    cache_dir: Path | None = None,
) -> Backend:
    """Build the backend named by the settings (``auto`` resolved by ``select_backend``)."""
    device = resolve_device(device)
    name, precision = select_backend(backend, device, precision)
    if name == "onnx":
        if not onnxruntime_available():
            raise ModelUnavailable(
                "SAFEGEN_BACKEND=onnx needs onnxruntime: pip install safegen[onnx]"
            )
        import torch

        from safegen.moderation.onnx_backend import OnnxBackend

        # Same thread count as torch (SAFEGEN_TORCH_THREADS, applied before this call).
        return OnnxBackend(loaded, device, precision, cache_dir, threads=torch.get_num_threads())
    return TorchBackend(loaded, device, precision)


def bucket_for(count: int) -> int:
    """The CUDA batch size ``count`` images are padded up to (``count`` past the last bucket)."""
    return next((b for b in CUDA_BUCKETS if b >= count), count)


def _cuda_compile_worthwhile(device: str) -> bool:
    """torch.compile (CUDA graphs) pays off for a long-running server on a recent GPU with triton.

    Untested here: the development machines have no GPU.
    """
    import torch

    if device != "cuda" or importlib.util.find_spec("triton") is None:
        return False
    return torch.cuda.get_device_capability()[0] >= 7


class TorchBackend:
    """PyTorch eager inference: half-precision weights for bf16 (and fp16 on CUDA), else fp32.

    bf16 weights rather than autocast: autocast casts every weight on every forward, which costs
    14% of a batch-1 forward and 6% at batch 8 on the development CPU, for a drift still well
    inside the bound (docs/performance.md). fp16 on CPU has no native kernels: autocast there.
    The model in ``loaded`` is moved and converted in place (no second copy of the weights).
    """

    name = "torch"

    def __init__(self, loaded: LoadedClassifier, device: str, precision: str) -> None:
        import torch

        self._torch = torch
        self.device = torch.device(device)
        self.precision = precision
        self._cuda = self.device.type == "cuda"
        model = loaded.model.to(self.device)  # type: ignore[attr-defined]
        self._dtype = torch.float32
        if precision == "bf16" or (precision == "fp16" and self._cuda):
            self._dtype = torch.bfloat16 if precision == "bf16" else torch.float16
            model = model.to(self._dtype)
        self._model = model
        prep = loaded.preprocessing
        scale, shift = normalisation(prep)
        self._scale = torch.tensor(scale, device=self.device).view(1, 3, 1, 1)
        self._shift = torch.tensor(shift, device=self.device).view(1, 3, 1, 1)
        if _cuda_compile_worthwhile(device):  # GPU only, untested here
            self._model = torch.compile(model, mode="reduce-overhead", dynamic=False)
            width, height = prep.size
            for size in CUDA_BUCKETS[:6]:  # compile the common buckets now, not on a request
                self.predict(np.zeros((size, height, width, 3), np.uint8))

    def _autocast(self) -> contextlib.AbstractContextManager[object]:
        torch = self._torch
        if self.precision == "fp16" and not self._cuda:
            return torch.autocast(self.device.type, dtype=torch.float16)
        return contextlib.nullcontext()

    def predict(self, batch: np.ndarray) -> np.ndarray:
        pixels = self._torch.from_numpy(np.ascontiguousarray(batch))
        if self._cuda:
            pixels = pixels.pin_memory()  # lets the copy below overlap with host work
        return self.predict_pixels(pixels)

    def predict_pixels(self, pixels: torch.Tensor) -> np.ndarray:
        """Like ``predict``, for a ``(N, H, W, 3)`` uint8 tensor on the host or the device."""
        torch = self._torch
        count = len(pixels)
        with torch.inference_mode(), self._autocast():
            x = pixels.to(self.device, non_blocking=True)
            padding = bucket_for(count) - count if self._cuda else 0
            if padding:  # pad to a bucket so shapes repeat; padding rows are sliced off below
                x = torch.cat([x, x.new_zeros((padding, *x.shape[1:]))])
            x = x.permute(0, 3, 1, 2).float()
            x = (x * self._scale + self._shift).to(self._dtype)
            logits = self._model(pixel_values=x).logits
            probs = torch.softmax(logits.float(), dim=-1)
        return probs[:count].cpu().numpy()

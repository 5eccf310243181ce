"""Inference backends: uint8 image batches in, class probabilities out.

Normalisation happens inside the backend on the device, so the host ships uint8 pixels (4x less
data than float32) and the decode threads do no float work.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Protocol

import numpy as np

from safegen.moderation.loading import LoadedClassifier

logger = logging.getLogger("safegen.moderation")

# Parity bounds (max |delta p| against fp32 on the same inputs), stated here and tested.
PARITY_BOUNDS = {"fp32": 1e-4, "bf16": 1e-2, "fp16": 5e-3}


class Backend(Protocol):
    """Runs the classifier on a ``(N, H, W, 3)`` uint8 batch, returns ``(N, labels)`` float32."""

    name: str
    precision: str

    def predict(self, batch: np.ndarray) -> np.ndarray: ...


def cpu_has_native_bf16() -> bool:
    """True where the CPU computes bf16 in hardware (AVX-512 BF16 or AMX); else bf16 is slower."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="ignore") as cpuinfo:
            flags = cpuinfo.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        from safegen.errors import ModelUnavailable

        raise ModelUnavailable("SAFEGEN_DEVICE=cuda but no CUDA device is visible")
    return device


def resolve_precision(precision: str, device: str) -> str:
    """``auto``: fp16 on CUDA; bf16 on CPUs with native bf16; fp32 otherwise."""
    if precision != "auto":
        return precision
    if device == "cuda":
        return "fp16"
    return "bf16" if cpu_has_native_bf16() else "fp32"


class TorchBackend:
    """PyTorch eager inference: fp32 weights with autocast for bf16/fp16; half weights on CUDA."""

    name = "torch"

    def __init__(self, loaded: LoadedClassifier, device: str, precision: str) -> None:
        import torch

        self._torch = torch
        self.device = torch.device(device)
        self.precision = precision
        model = loaded.model.to(self.device)  # type: ignore[attr-defined]
        if self.device.type == "cuda" and precision == "fp16":
            model = model.half()
        self._model = model
        prep = loaded.preprocessing
        # (x * rescale - mean) / std  ==  x * scale + shift, per channel
        scale = [prep.rescale_factor / s for s in prep.std]
        shift = [-m / s for m, s in zip(prep.mean, prep.std, strict=True)]
        self._scale = torch.tensor(scale, device=self.device).view(1, 3, 1, 1)
        self._shift = torch.tensor(shift, device=self.device).view(1, 3, 1, 1)
        self._pin = self.device.type == "cuda"

    def _autocast(self) -> contextlib.AbstractContextManager[object]:
        torch = self._torch
        if self.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        if self.precision == "fp16" and self.device.type != "cuda":
            return torch.autocast(self.device.type, dtype=torch.float16)
        return contextlib.nullcontext()

    def predict(self, batch: np.ndarray) -> np.ndarray:
        torch = self._torch
        pixels = torch.from_numpy(np.ascontiguousarray(batch))
        if self._pin:
            pixels = pixels.pin_memory()
        with torch.inference_mode(), self._autocast():
            x = pixels.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float()
            x = x * self._scale + self._shift
            if self.device.type == "cuda" and self.precision == "fp16":
                x = x.half()
            logits = self._model(pixel_values=x).logits
            probs = torch.softmax(logits.float(), dim=-1)
        return probs.cpu().numpy()

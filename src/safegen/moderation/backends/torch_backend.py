"""PyTorch eager inference: the reference path, the CUDA path and, on CPUs with native bf16, bf16.

Normalisation runs on the device from uint8 pixels (``normalisation``), so the host ships 4x less
data than float32.
"""

from __future__ import annotations

import contextlib
import importlib.util
from typing import TYPE_CHECKING

import numpy as np

from safegen.moderation.backends.spec import (
    BackendSpec,
    BuildRequest,
    cpu_has_native_bf16,
    normalisation,
)
from safegen.moderation.loading import LoadedClassifier

if TYPE_CHECKING:
    import torch

# Batch sizes a CUDA batch is padded up to, so the shapes repeat (cuDNN/compile/CUDA-graph caches).
CUDA_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


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


def _worth_measuring(device: str, precision: str) -> bool:
    if device == "cuda":
        if precision != "bf16":
            return True
        import torch

        return bool(torch.cuda.is_bf16_supported())
    # fp16 has no native CPU kernels (autocast emulates it: minutes for ViT-B/16); bf16 without
    # AVX-512 BF16 or AMX is slower than fp32.
    return precision == "fp32" or (precision == "bf16" and cpu_has_native_bf16())


def _versions() -> dict[str, str]:
    import torch

    return {"torch": torch.__version__}


def _build(loaded: LoadedClassifier, request: BuildRequest) -> TorchBackend:
    return TorchBackend(loaded, request.device, request.precision)


SPEC = BackendSpec(
    name="torch",
    # Max |delta p| against torch fp32 (tests/unit/test_backends.py, docs/performance.md).
    bounds={"fp32": 1e-4, "bf16": 1e-2, "fp16": 5e-3},
    factory=_build,
    missing=lambda device, precision: None,  # torch is a dependency; devices checked earlier
    worth_measuring=_worth_measuring,
    versions=_versions,
    rank=0,
)

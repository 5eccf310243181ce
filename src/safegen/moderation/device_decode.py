"""JPEG decoding on the model's device with torchvision (nvjpeg on CUDA), opt-in.

On a GPU host the CPU becomes the limit: decoding a 512x1024 JPEG costs about 3 ms of one core
(bench/host_pipeline.py), so 5,000 images/s would need about 16 cores for decoding alone. With
``SAFEGEN_DEVICE_DECODE=true`` the decode threads only check each JPEG's header against the limits
and the model thread decodes the whole batch in one ``torchvision.io.decode_jpeg`` call on the
device, then resizes there with antialiased bilinear interpolation (the PIL filter the processor
uses). Other formats, and JPEGs PIL reports as CMYK, keep the CPU path.

torchvision is optional and absent on the development machines (no CPU build there), so the import
is guarded and this module has only run against a stand-in decoder
(tests/unit/test_device_decode.py); its speed on a GPU is unmeasured.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from safegen.errors import ImageError, ModelUnavailable

if TYPE_CHECKING:
    from safegen.moderation.backends.torch_backend import TorchBackend

NEEDS_TORCHVISION = (
    "SAFEGEN_DEVICE_DECODE=true needs torchvision (with nvjpeg for CUDA); "
    "install it or set SAFEGEN_DEVICE_DECODE=false"
)
DEVICE_DECODE_MODES = ("RGB", "L")  # JPEG colour modes nvjpeg converts to RGB; CMYK stays on CPU


@dataclass(frozen=True)
class EncodedJpeg:
    """A JPEG whose header passed the limits, to be decoded on the device with its batch."""

    data: bytes


def torchvision_decoder_available() -> bool:
    return importlib.util.find_spec("torchvision") is not None


class DeviceDecoder:
    """Decodes a batch of JPEGs on ``device`` into ``(height, width, 3)`` uint8 tensors there."""

    def __init__(self, device: Any, size: tuple[int, int]) -> None:
        if not torchvision_decoder_available():
            raise ModelUnavailable(NEEDS_TORCHVISION)
        import torch
        from torchvision.io import ImageReadMode, decode_jpeg

        self._torch = torch
        self._decode_jpeg = decode_jpeg
        self._rgb = ImageReadMode.RGB
        self.device = device
        self.width, self.height = size

    def decode(self, items: list[EncodedJpeg]) -> list[Any]:
        """One tensor per item, or an ``ImageError`` in place of an image that fails to decode.

        torchvision decodes a list in one call but returns nothing when any image fails, so a
        failed batch is decoded again one image at a time to find the bad ones.
        """
        torch = self._torch
        encoded = [torch.frombuffer(bytearray(item.data), dtype=torch.uint8) for item in items]
        try:
            images = self._decode_batch(encoded)
        except Exception:  # nvjpeg/libjpeg errors have no stable type
            images = [self._decode_alone(data) for data in encoded]
        return [image if isinstance(image, ImageError) else self.resize(image)
                for image in images]

    def _decode_batch(self, encoded: list[Any]) -> list[Any]:
        decoded = self._decode_jpeg(encoded, mode=self._rgb, device=self.device,
                                    apply_exif_orientation=True)
        return list(decoded)

    def _decode_alone(self, data: Any) -> Any:
        try:
            return self._decode_batch([data])[0]
        except Exception:
            return ImageError("the image data is truncated or corrupt")

    def resize(self, image: Any) -> Any:
        """``(3, H, W)`` uint8 to ``(height, width, 3)`` uint8, as PIL's bilinear resize does."""
        torch = self._torch
        if tuple(image.shape[1:]) != (self.height, self.width):
            scaled = torch.nn.functional.interpolate(
                image.unsqueeze(0).float(), size=(self.height, self.width), mode="bilinear",
                antialias=True, align_corners=False,
            )
            image = scaled.round_().clamp_(0, 255).to(torch.uint8).squeeze(0)
        return image.permute(1, 2, 0)


def predict_decoding_on_device(
    backend: TorchBackend, decoder: DeviceDecoder, items: list[np.ndarray | EncodedJpeg]
) -> list[np.ndarray | ImageError]:
    """Class probabilities per item: JPEGs decoded on the device, decoded arrays uploaded.

    An item whose JPEG fails to decode gets its ``ImageError`` in its place; the rest are scored.
    """
    import torch

    jpegs = [item for item in items if isinstance(item, EncodedJpeg)]
    decoded = iter(decoder.decode(jpegs))
    images = [
        next(decoded) if isinstance(item, EncodedJpeg)
        else torch.from_numpy(item).to(decoder.device, non_blocking=True)
        for item in items
    ]
    good = [image for image in images if not isinstance(image, ImageError)]
    probs = iter(backend.predict_pixels(torch.stack(good)) if good else ())
    return [image if isinstance(image, ImageError) else next(probs) for image in images]

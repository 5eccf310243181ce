"""The classifier as one graph for exporters: ``(N, H, W, 3)`` uint8 pixels in, probabilities out.

Layout change, normalisation and softmax are folded into the graph, so an exported backend takes
the same uint8 batch as the torch backend and the model thread hands raw pixels over (measured as
fast as normalising in numpy, and one copy fewer).
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

from safegen.moderation.backends.spec import normalisation
from safegen.moderation.loading import LoadedClassifier

if TYPE_CHECKING:
    import torch


def pixels_to_probabilities(loaded: LoadedClassifier, half: bool = False) -> torch.nn.Module:
    """A float32 copy of the model (float16 when ``half``) wrapped to take uint8 pixels."""
    import torch

    class PixelsToProbabilities(torch.nn.Module):
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

    # A copy: the caller's model may be converted in place later (torch bf16) or is in use.
    model = copy.deepcopy(loaded.model).float().eval()  # type: ignore[attr-defined]
    if half:
        return PixelsToProbabilities(model.half(), torch.float16)
    return PixelsToProbabilities(model, torch.float32)


def example_pixels(loaded: LoadedClassifier, count: int = 2) -> torch.Tensor:
    """A zero uint8 batch of the model's input size, for tracing (batch axis kept dynamic)."""
    import torch

    width, height = loaded.preprocessing.size
    return torch.zeros((count, height, width, 3), dtype=torch.uint8)

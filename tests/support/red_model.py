"""A classifier engine whose score the test controls: the NSFW probability is the image's red.

Everything but the model is the real engine: decode threads, frame sampling, the batcher.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from safegen.moderation.engine import ClassifierEngine


class RedBackend:
    """P(nsfw) = mean red / 255. Records the size of every batch it runs."""

    name = "red"
    precision = "fp32"
    device = "cpu"

    def __init__(self) -> None:
        self.batches: list[int] = []

    def predict(self, batch: np.ndarray) -> np.ndarray:
        self.batches.append(len(batch))
        red = batch[..., 0].astype(np.float32).mean(axis=(1, 2)) / 255
        return np.stack([1 - red, red], axis=1)


class RedEngine(ClassifierEngine):
    """:class:`ClassifierEngine` loading :class:`RedBackend` instead of a checkpoint."""

    def _load(self) -> RedBackend:  # type: ignore[override]
        self._loaded = SimpleNamespace(  # type: ignore[assignment]
            labels=["normal", "nsfw"], nsfw_index=1, preprocessing=SimpleNamespace(size=(16, 16))
        )
        self.labels = ["normal", "nsfw"]
        self.red_backend = RedBackend()
        return self.red_backend

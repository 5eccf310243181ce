"""The classifier contract: what the web layer and the services need from any NSFW classifier.

The routes, ``/generate`` and the CLI depend on this protocol only, so the in-process engine
(``engine.ClassifierEngine``), a Ray Serve handle (``ray_serve.remote``) or a fake in tests plug in
the same way. ``Backend`` is the narrower contract one level down: a model that turns a batch of
pixels into probabilities (torch, onnxruntime, OpenVINO; see ``moderation/backends/``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
from PIL import Image

from safegen.errors import SafegenError


@dataclass(frozen=True)
class Score:
    """One image's classification."""

    label: str
    nsfw_score: float
    scores: dict[str, float]
    frames_scored: int = 1  # an animation: frames scored; label and scores are the worst one's
    worst_frame: int = 0  # index in the animation of the highest-scoring frame


class Classifier(Protocol):
    """What the web layer needs from a classifier (in-process engine or a remote handle)."""

    model_name: str
    labels: list[str]

    @property
    def ready(self) -> bool: ...

    async def classify_bytes(self, items: list[bytes]) -> list[Score | SafegenError]: ...

    async def classify_image(self, image: Image.Image) -> Score: ...


class Backend(Protocol):
    """Runs the classifier on a ``(N, H, W, 3)`` uint8 batch, returns ``(N, labels)`` float32.

    Normalisation happens inside the backend (on the device, or inside an exported graph), so the
    host ships uint8 pixels (4x less data than float32) and the decode threads do no float work.
    """

    name: str
    precision: str

    def predict(self, batch: np.ndarray) -> np.ndarray: ...

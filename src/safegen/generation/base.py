"""The generator contract: what the service needs from any text-to-image backend.

The web layer and the orchestration code depend on this protocol only, so a backend can be swapped
(diffusers in-process, a remote model server, a fake in tests) without touching them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from PIL import Image


@dataclass(frozen=True)
class GenerationRequest:
    """One image to generate. The API layer enforces ranges; backends check what they must."""

    prompt: str
    negative_prompt: str | None
    width: int
    height: int
    num_inference_steps: int
    seed: int | None = None
    guidance_scale: float | None = None


@runtime_checkable
class Generator(Protocol):
    """A text-to-image backend with a start/stop life cycle.

    ``start`` loads the model and warms it (so the first request is not slow); ``generate`` returns
    an RGB image of exactly ``req.width`` x ``req.height`` or raises a ``SafegenError``
    (``InvalidInput``, ``GenerationFailed``, ``NotReady``); ``stop`` releases the model.
    """

    name: str

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def generate(self, req: GenerationRequest) -> Image.Image: ...

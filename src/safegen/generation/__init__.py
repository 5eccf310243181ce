"""Image generation: the ``Generator`` contract, the diffusers backend and the upscalers.

Nothing here imports the web layer; torch and diffusers are imported only when a model is loaded.
"""

from safegen.devices import resolve_device
from safegen.generation.base import GenerationRequest, Generator
from safegen.generation.diffusers_backend import DiffusersGenerator
from safegen.generation.upscale import (
    DiffusersUpscaler,
    ResizeUpscaler,
    Upscaler,
    build_upscaler,
)

__all__ = [
    "DiffusersGenerator",
    "DiffusersUpscaler",
    "GenerationRequest",
    "Generator",
    "ResizeUpscaler",
    "Upscaler",
    "build_upscaler",
    "resolve_device",
]

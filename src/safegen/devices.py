"""Which torch device a component runs on: one rule for the classifier, generator and upscaler."""

from __future__ import annotations

from safegen.errors import ModelUnavailable


def resolve_device(device: str, env_var: str = "SAFEGEN_DEVICE") -> str:
    """Map ``auto`` to ``cuda`` when a GPU is visible, else ``cpu``; refuse ``cuda`` (or
    ``cuda:N``) without one, naming the setting that asked for it."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelUnavailable(f"device '{device}' was requested ({env_var}) but no GPU is visible")
    return device

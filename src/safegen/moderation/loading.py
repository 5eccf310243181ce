"""Load the NSFW classifier and its preprocessing facts from a hub id or a local directory."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from safegen.errors import ModelUnavailable

NSFW_ENV_VAR = "SAFEGEN_NSFW_MODEL"


@dataclass(frozen=True)
class Preprocessing:
    """What ``ViTImageProcessor`` would do, read from ``preprocessor_config.json``."""

    size: tuple[int, int] = (224, 224)  # (width, height)
    rescale_factor: float = 1 / 255
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)

    @classmethod
    def from_config(cls, config: dict[str, object]) -> Preprocessing:
        size = config.get("size", {"height": 224, "width": 224})
        if isinstance(size, int):
            width = height = size
        elif isinstance(size, dict):
            sides = {str(k): int(v) for k, v in size.items()}
            edge = sides.get("shortest_edge", 224)
            height, width = sides.get("height", edge), sides.get("width", edge)
        else:
            raise ModelUnavailable("preprocessor_config.json has an unreadable 'size'")
        resample = config.get("resample", 2)
        if resample != 2:
            # Our decoder resizes bilinearly; another filter would silently change scores.
            raise ModelUnavailable(f"unsupported preprocessor resample={resample}; expected 2")
        mean = tuple(float(v) for v in config.get("image_mean", cls.mean))  # type: ignore[attr-defined]
        std = tuple(float(v) for v in config.get("image_std", cls.std))  # type: ignore[attr-defined]
        return cls(
            size=(width, height),
            rescale_factor=float(config.get("rescale_factor", 1 / 255)),  # type: ignore[arg-type]
            mean=mean,  # type: ignore[arg-type]
            std=std,  # type: ignore[arg-type]
        )


@dataclass
class LoadedClassifier:
    """A loaded ``ViTForImageClassification`` (any image classifier) and its facts."""

    name: str
    model: object  # torch.nn.Module; typed loosely so this module imports without torch
    labels: list[str]
    nsfw_index: int
    preprocessing: Preprocessing


def labels_from_config(id2label: dict[object, str]) -> list[str]:
    """Labels in index order. Keys may be ints or strings (the original upload's are strings)."""
    try:
        by_index = {int(k): str(v) for k, v in id2label.items()}  # type: ignore[call-overload]
    except (TypeError, ValueError):
        raise ModelUnavailable("the model config's id2label has non-integer keys") from None
    if sorted(by_index) != list(range(len(by_index))):
        raise ModelUnavailable("the model config's id2label indices are not 0..n-1")
    return [by_index[i] for i in range(len(by_index))]


def load_classifier(model: str, cache_dir: Path | None = None) -> LoadedClassifier:
    """Load from a local directory or a hub id (the local cache first; the hub if reachable).

    Missing weights raise ``ModelUnavailable`` with one line that says what to do.
    """
    from transformers import AutoModelForImageClassification
    from transformers.utils import cached_file

    from safegen.hub import model_unavailable, resolve_model

    kind = "NSFW classifier"
    source = resolve_model(model, kind=kind, env_var=NSFW_ENV_VAR, cache_dir=cache_dir)
    try:
        network = AutoModelForImageClassification.from_pretrained(source, cache_dir=cache_dir)
        config_file = cached_file(
            source, "preprocessor_config.json", cache_dir=cache_dir,
            _raise_exceptions_for_missing_entries=False,
        )
    except Exception as exc:
        raise model_unavailable(model, kind=kind, env_var=NSFW_ENV_VAR, exc=exc) from None
    network.eval()
    labels = labels_from_config(network.config.id2label)
    lowered = [label.lower() for label in labels]
    if "nsfw" not in lowered:
        raise ModelUnavailable(f"{kind} '{model}' has no 'nsfw' label (labels: {labels})")
    preprocessing = (
        Preprocessing.from_config(json.loads(Path(config_file).read_text()))
        if config_file
        else Preprocessing()
    )
    return LoadedClassifier(
        name=model,
        model=network,
        labels=labels,
        nsfw_index=lowered.index("nsfw"),
        preprocessing=preprocessing,
    )

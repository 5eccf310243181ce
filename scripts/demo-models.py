"""Build tiny random-weight models (classifier + text-to-image pipeline) for a no-download demo."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.tiny_models import build_tiny_sd_pipeline, build_tiny_vit_classifier  # noqa: E402

target = Path(sys.argv[1] if len(sys.argv) > 1 else ".cache/demo-models")
if not (target / "classifier" / "config.json").exists():
    build_tiny_vit_classifier(target / "classifier")
if not (target / "generator" / "model_index.json").exists():
    build_tiny_sd_pipeline(target / "generator")
print(target)

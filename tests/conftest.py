"""Shared fixtures. Support plugins build tiny models and start real servers on 127.0.0.1."""

from __future__ import annotations

import os
import tempfile

# Tests never reach the Hugging Face hub: any hub id must come from the (empty) cache.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Caches the code writes (the ONNX export cache) go to a throwaway place, never the user's.
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="safegen-test-cache-")

pytest_plugins = [
    "tests.support.tiny_models",
    "tests.support.redis_server",
    "tests.support.s3servers",
    "tests.support.app_client",
    "tests.support.image_server",
]

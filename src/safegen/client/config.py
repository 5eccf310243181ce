"""Where the server is, how to authenticate, and the explicit timeouts."""

from __future__ import annotations

import os

import httpx

CLIENT_VERSION = "0.1.0"
URL_ENV = "SAFEGEN_URL"
KEY_ENV = "SAFEGEN_API_KEY"
# Explicit, never httpx's 5 s default: a generation can take a minute on a CPU host.
DEFAULT_TIMEOUT = httpx.Timeout(connect=5.0, read=120.0, write=60.0, pool=60.0)
DEFAULT_CONCURRENCY = 4
CHUNK_ERROR_STATUSES = frozenset({400, 413, 422})  # about this request's images: kept per image


def resolve_base_url(base_url: str | None) -> str:
    url = base_url or os.environ.get(URL_ENV, "")
    if not url:
        raise ValueError(f"no server URL: pass base_url or set {URL_ENV}")
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"the server URL must start with http:// or https://; got {url!r}")
    return url.rstrip("/") + "/"


def request_headers(api_key: str | None) -> dict[str, str]:
    key = api_key if api_key is not None else os.environ.get(KEY_ENV)
    headers = {"User-Agent": f"safegen-client/{CLIENT_VERSION}"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    return headers


def check_concurrency(value: int) -> int:
    if value < 1:
        raise ValueError("max_concurrency must be at least 1")
    return value

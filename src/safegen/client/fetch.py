"""Fetching images given by URL, on the client's side, with a byte cap while streaming.

A separate HTTP client from the API's: the API key must never travel to another host.
"""

from __future__ import annotations

import httpx

from safegen.client.inputs import too_large
from safegen.client.models import ImageProblem

MAX_REDIRECTS = 3


def url_client_options(timeout: httpx.Timeout) -> dict[str, object]:
    return {"timeout": timeout, "follow_redirects": True, "max_redirects": MAX_REDIRECTS}


def _failed(url: str, reason: str) -> ImageProblem:
    return ImageProblem("fetch_failed", f"could not fetch {url}: {reason}")


def fetch(http: httpx.Client, url: str, max_bytes: int) -> bytes | ImageProblem:
    try:
        with http.stream("GET", url) as response:
            if response.status_code != 200:
                return _failed(url, f"the host answered {response.status_code}")
            data = bytearray()
            for block in response.iter_bytes():
                data += block
                if len(data) > max_bytes:
                    return too_large(len(data), max_bytes)
            return bytes(data)
    except httpx.HTTPError as exc:
        return _failed(url, type(exc).__name__)


async def afetch(http: httpx.AsyncClient, url: str, max_bytes: int) -> bytes | ImageProblem:
    try:
        async with http.stream("GET", url) as response:
            if response.status_code != 200:
                return _failed(url, f"the host answered {response.status_code}")
            data = bytearray()
            async for block in response.aiter_bytes():
                data += block
                if len(data) > max_bytes:
                    return too_large(len(data), max_bytes)
            return bytes(data)
    except httpx.HTTPError as exc:
        return _failed(url, type(exc).__name__)

"""A Python client for a safegen server: ``Client`` (blocking) and ``AsyncClient`` (asyncio).

It imports httpx and the standard library only, nothing of the server (no torch, FastAPI or
pydantic), so it installs without them: see ``clients/python``.

    from safegen.client import Client
    with Client("http://127.0.0.1:8000", api_key="...") as client:
        for result in client.classify(["photos/", "https://example.com/a.jpg"], progress=True):
            print(result.source, result.nsfw_score if result.ok else result.error.message)
"""

from safegen.client.async_client import AsyncClient
from safegen.client.errors import (
    APIError,
    AuthenticationError,
    ConnectionFailed,
    IncompleteClassification,
    RateLimited,
    SafegenClientError,
    ServiceUnavailable,
    UploadFailed,
)
from safegen.client.models import (
    GenerateResult,
    ImageProblem,
    ImageResult,
    ModerationResult,
    ServerInfo,
)
from safegen.client.retry import RetryPolicy
from safegen.client.sync_client import Client

__all__ = [
    "APIError", "AsyncClient", "AuthenticationError", "Client", "ConnectionFailed",
    "GenerateResult", "ImageProblem", "ImageResult", "IncompleteClassification",
    "ModerationResult", "RateLimited", "RetryPolicy", "SafegenClientError", "ServerInfo",
    "ServiceUnavailable", "UploadFailed",
]

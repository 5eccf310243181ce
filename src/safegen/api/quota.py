"""Rate limiting at the edge: who is asking (API key id or client address) and what it costs."""

from __future__ import annotations

from fastapi import Request

from safegen.api.client_address import client_ip
from safegen.api.ratelimit import RateLimiter, headers


def identity(request: Request) -> str:
    """The API key id when authenticated, else the client address (behind trusted proxies)."""
    key_id = getattr(request.state, "key_id", None)
    if key_id:
        return f"key:{key_id}"
    return f"ip:{client_ip(request, request.app.state.settings.trusted_proxies)}"


async def charge(request: Request, route: str, cost: int = 1) -> dict[str, str]:
    """Take ``cost`` units (images, for batch requests) or raise the 429/503 refusal.

    Returns the ``X-RateLimit-*`` headers for the successful response.
    """
    limiter: RateLimiter | None = request.app.state.rate_limiter
    if limiter is None:
        return {}
    decision = await limiter.hit(route, identity(request), cost)
    if not decision.allowed:
        raise decision.http_exception()
    return headers(decision)

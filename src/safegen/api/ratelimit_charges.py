"""Rate limiting at the edge: who is asking (API key id or client address) and what it costs.

A request is checked against its budget before its body is read (:func:`precheck`) and charged
once its cost is known (:func:`charge`): a client over its budget costs the server nothing.
"""

from __future__ import annotations

import ipaddress

from fastapi import Request

from safegen.api.client_address import client_ip
from safegen.api.ratelimit import RateLimitDecision, RateLimiter, headers


def identity(request: Request) -> str:
    """The API key id when authenticated, else the client address (behind trusted proxies).

    IPv6 clients are keyed by their network (``SAFEGEN_RATE_LIMIT_IPV6_PREFIX``, /64 by
    default): one host commonly holds a whole /64, and a budget per /128 would be no budget.
    """
    key_id = getattr(request.state, "key_id", None)
    if key_id:
        return f"key:{key_id}"
    settings = request.app.state.settings
    address = client_ip(request, settings.trusted_proxies)
    return f"ip:{address_identity(address, settings.rate_limit_ipv6_prefix)}"


def address_identity(address: str, ipv6_prefix: int) -> str:
    """``address`` itself for IPv4, its ``/ipv6_prefix`` network for IPv6."""
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return address  # "unknown": no peer address
    if isinstance(parsed, ipaddress.IPv6Address):
        if parsed.ipv4_mapped is not None:  # an IPv4 client on a dual-stack socket
            return str(parsed.ipv4_mapped)
        return str(ipaddress.ip_network(f"{parsed}/{ipv6_prefix}", strict=False))
    return str(parsed)


async def precheck(request: Request, route: str) -> None:
    """Refuse (429/503) a client with nothing left, taking nothing: the body is not read yet, so
    what a batch will cost is not known; ``charge`` takes that once it is."""
    limiter: RateLimiter | None = request.app.state.rate_limiter
    if limiter is not None:
        _raise_unless_allowed(await limiter.test(route, identity(request)))


async def charge(request: Request, route: str, cost: int = 1) -> dict[str, str]:
    """Take ``cost`` units (images, for batch requests) or raise the 429/503 refusal.

    Returns the ``X-RateLimit-*`` headers for the successful response.
    """
    limiter: RateLimiter | None = request.app.state.rate_limiter
    if limiter is None:
        return {}
    decision = await limiter.hit(route, identity(request), cost)
    _raise_unless_allowed(decision)
    return headers(decision)


def _raise_unless_allowed(decision: RateLimitDecision) -> None:
    if not decision.allowed:
        raise decision.http_exception()

"""Per-identity, per-route rate limiting on the ``limits`` library (in-memory or Redis storage).

Strategy: **moving window** by default. It is exact (no 2x burst at a window boundary, unlike the
fixed window), and a refused request consumes nothing: the check-and-take is one atomic Lua script
in Redis, so a refused 100-image request does not drain the budget the way a fixed window's
``INCR`` would, and processes sharing a Redis share one budget exactly. Its price is one stored
timestamp per unit of the limit (a list capped at the limit's size per key); for limits in the
tens of thousands pass ``strategy="sliding-window-counter"`` (O(1) storage, approximate).

Cost is the number of images: a 100-image request takes 100 units. Storage failures never hang a
request (bounded connect/socket timeouts, one immediate retry, an overall deadline) and follow the
configured policy: fail open (allow) or fail closed (deny, HTTP 503).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, cast

from fastapi import HTTPException
from limits import RateLimitItem
from limits.aio.storage import Storage as AsyncStorage
from limits.aio.strategies import STRATEGIES
from limits.aio.strategies import RateLimiter as _Strategy
from limits.storage import storage_from_string

from safegen.metrics import Metrics
from safegen.setting_values import parse_limit
from safegen.settings import Settings

logger = logging.getLogger(__name__)

Reason = Literal["ok", "limited", "cost_exceeds_limit", "storage_unavailable"]
STORAGE_RETRY_AFTER_S = 5
_STATUS = {"ok": 200, "limited": 429, "cost_exceeds_limit": 429, "storage_unavailable": 503}
_CODE = {
    "ok": "ok",
    "limited": "rate_limited",
    "cost_exceeds_limit": "rate_limit_cost_too_high",
    "storage_unavailable": "rate_limit_unavailable",
}
_REDIS_SCHEMES = ("redis", "rediss", "redis+unix", "redis+sentinel", "redis+cluster")


@dataclass(frozen=True)
class RateLimitDecision:
    """The answer to one :meth:`RateLimiter.hit`. ``None`` fields are unknown and not sent."""

    allowed: bool
    limit: int | None
    remaining: int | None
    reset_epoch: int | None
    retry_after_s: int | None = None
    reason: Reason = "ok"
    message: str = ""

    @property
    def status_code(self) -> int:
        """200 when allowed, else 429 (over the limit) or 503 (storage down, failing closed)."""
        return 200 if self.allowed else _STATUS[self.reason]

    @property
    def code(self) -> str:
        """Stable error code for a refusal (``rate_limited``, ``rate_limit_unavailable``, ..)."""
        return _CODE[self.reason]

    def http_exception(self) -> HTTPException:
        """The refusal as FastAPI's ``HTTPException`` (status, ``{code, message}``, headers)."""
        return HTTPException(
            self.status_code, {"code": self.code, "message": self.message}, headers(self)
        )


def _limits_uri(uri: str) -> str:
    """Our ``memory://`` / ``redis://host:port/db`` -> the async URI ``limits`` expects."""
    scheme = uri.partition("://")[0].lower()
    if scheme.startswith("async+"):
        return uri
    if scheme == "memory" or scheme in _REDIS_SCHEMES:
        return f"async+{uri}"
    raise ValueError("rate-limit storage must be a memory:// or redis:// URI")


class _ThrottledWarning:
    """Logs a storage failure at most once per ``interval_s``, counting the ones it held back."""

    def __init__(
        self, interval_s: float = 30.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.interval_s = interval_s
        self._clock = clock
        self._last = -math.inf
        self._suppressed = 0

    def __call__(self, exc: BaseException, policy: str) -> None:
        now = self._clock()
        if now - self._last < self.interval_s:
            self._suppressed += 1
            return
        # The exception's type only: its text can carry hosts or credentials from the URI.
        logger.warning(
            "rate-limit storage unreachable (%s); applying %s (%d similar warnings suppressed)",
            type(exc).__name__, policy, self._suppressed,
        )
        self._last, self._suppressed = now, 0


class RateLimiter:
    """Checks and takes ``cost`` units of a route's limit for an identity (API key id or IP)."""

    def __init__(
        self,
        default_limit: str,
        route_limits: Mapping[str, str] | None = None,
        storage_uri: str = "memory://",
        fail_open: bool = True,
        on_storage_error: Callable[[str], None] | None = None,
        *,
        strategy: str = "moving-window",
        storage_timeout_s: float = 0.5,
    ) -> None:
        self._default = parse_limit(default_limit)
        self._routes = {route: parse_limit(text) for route, text in (route_limits or {}).items()}
        if strategy not in STRATEGIES:
            known = sorted(STRATEGIES)
            raise ValueError(f"unknown rate-limit strategy {strategy!r}; known: {known}")
        self.fail_open = fail_open
        self._on_storage_error = on_storage_error
        self._deadline_s = storage_timeout_s * 3
        uri = _limits_uri(storage_uri)
        options: dict[str, object] = {}
        if not uri.startswith("async+memory"):
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff

            # redis-py's default retries 10 times with backoff: seconds of stall per request when
            # Redis is down. One immediate retry still heals a connection broken by a restart.
            options = {
                "implementation": "redispy",
                "key_prefix": "safegen",
                "socket_connect_timeout": storage_timeout_s,
                "socket_timeout": storage_timeout_s,
                "retry": Retry(NoBackoff(), 1),
            }
        storage = storage_from_string(uri, **options)  # type: ignore[arg-type]
        self._storage = cast(AsyncStorage, storage)
        make_strategy: Callable[[Any], _Strategy] = STRATEGIES[strategy]
        self._strategy = make_strategy(self._storage)
        self._warn = _ThrottledWarning()

    @classmethod
    def from_settings(cls, settings: Settings, metrics: Metrics) -> RateLimiter | None:
        """The limiter the settings ask for (``None`` when ``SAFEGEN_RATE_LIMIT`` is empty);
        storage failures are counted in ``metrics``."""
        if not settings.rate_limit:
            return None
        return cls(
            settings.rate_limit, settings.rate_limit_routes, settings.rate_limit_storage,
            fail_open=settings.rate_limit_fail_open,
            on_storage_error=lambda policy: metrics.ratelimit_storage_errors.labels(policy).inc(),
            storage_timeout_s=settings.rate_limit_storage_timeout_s,
        )

    def limit_for(self, route: str) -> RateLimitItem:
        """The limit that applies to ``route`` (its own, or the default)."""
        return self._routes.get(route, self._default)

    async def hit(self, route: str, identity: str, cost: int = 1) -> RateLimitDecision:
        """Take ``cost`` units for ``identity`` on ``route`` if they are available."""
        return await self._decide(route, identity, cost, take=True)

    async def test(self, route: str, identity: str, cost: int = 1) -> RateLimitDecision:
        """Whether ``cost`` units are available, taking none: the check made before a request's
        body is read, so a client over its budget is refused before it costs anything."""
        return await self._decide(route, identity, cost, take=False)

    async def _decide(
        self, route: str, identity: str, cost: int, *, take: bool
    ) -> RateLimitDecision:
        if cost < 1:
            raise ValueError("cost must be at least 1")
        item = self.limit_for(route)
        if cost > item.amount:
            return RateLimitDecision(
                False, item.amount, None, None, None, "cost_exceeds_limit",
                f"this request costs {cost} (one per image) but the rate limit allows at most "
                f"{item}; send fewer images per request",
            )
        try:
            allowed, reset, remaining = await asyncio.wait_for(
                self._take(item, route, identity, cost, take), self._deadline_s
            )
        except Exception as exc:
            # Any storage failure (redis errors, OSError, our deadline) follows the policy: the
            # limiter must never turn into a 500 or a hang. Failing open, a test lets the request
            # on to its charge, where the failure is logged and counted once.
            if not take and self.fail_open:
                return RateLimitDecision(
                    True, item.amount, None, None, reason="storage_unavailable"
                )
            return self._storage_failed(exc)
        reset_epoch = math.ceil(reset)
        if allowed:
            return RateLimitDecision(True, item.amount, remaining, reset_epoch)
        # The oldest entry's expiry: exact for cost 1, a lower bound for larger costs.
        retry_after = max(1, math.ceil(reset - time.time()))
        return RateLimitDecision(
            False, item.amount, remaining, reset_epoch, retry_after, "limited",
            f"rate limit of {item} exceeded (this request costs {cost}, {remaining} left); "
            f"retry after {retry_after} s",
        )

    async def _take(
        self, item: RateLimitItem, route: str, identity: str, cost: int, take: bool
    ) -> tuple[bool, float, int]:
        if take:
            allowed = await self._strategy.hit(item, route, identity, cost=cost)
        else:
            allowed = await self._strategy.test(item, route, identity, cost=cost)
        stats = await self._strategy.get_window_stats(item, route, identity)
        return allowed, stats.reset_time, max(0, int(stats.remaining))

    def _storage_failed(self, exc: BaseException) -> RateLimitDecision:
        policy = "fail_open" if self.fail_open else "fail_closed"
        self._warn(exc, policy)
        if self._on_storage_error is not None:
            self._on_storage_error(policy)
        if self.fail_open:
            return RateLimitDecision(True, None, None, None, reason="storage_unavailable")
        return RateLimitDecision(
            False, None, None, None, STORAGE_RETRY_AFTER_S, "storage_unavailable",
            "rate limiting is temporarily unavailable; retry later",
        )

    async def check(self) -> bool:
        """True when the storage answers (for readiness probes); never raises or hangs."""
        try:
            return bool(await asyncio.wait_for(self._storage.check(), self._deadline_s))
        except Exception:
            return False

    async def close(self) -> None:
        """Release the Redis connection pool, or the in-memory storage's expiry task."""
        client = getattr(getattr(self._storage, "bridge", None), "storage", None)
        if client is not None and hasattr(client, "aclose"):
            await client.aclose()
        timer = getattr(self._storage, "timer", None)
        if isinstance(timer, asyncio.Task) and not timer.done():
            timer.cancel()


def headers(decision: RateLimitDecision) -> dict[str, str]:
    """``X-RateLimit-*`` headers for a response, and ``Retry-After`` when retrying can help."""
    out: dict[str, str] = {}
    if decision.reason != "storage_unavailable":
        for name, value in (
            ("X-RateLimit-Limit", decision.limit),
            ("X-RateLimit-Remaining", decision.remaining),
            ("X-RateLimit-Reset", decision.reset_epoch),
        ):
            if value is not None:
                out[name] = str(value)
    if not decision.allowed and decision.retry_after_s is not None:
        out["Retry-After"] = str(decision.retry_after_s)
    return out

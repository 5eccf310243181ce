"""When to try a request again, and how long to wait first.

Retried: connection failures, and 429/503 (the server refused before doing any work). A
``Retry-After`` header is honoured up to a cap; otherwise waits grow exponentially with jitter, so
many clients refused together do not come back together. Other statuses never change on a
retry and are not retried. A request that is not idempotent (``/generate``) is retried only when
it surely never reached the server: a failed connect, or a 429/503 refusal.
"""

from __future__ import annotations

import email.utils
import random
import time
from dataclasses import dataclass

import httpx

RETRY_STATUSES = frozenset({429, 503})


@dataclass(frozen=True)
class RetryPolicy:
    """``attempts`` tries in all; waits ``backoff_s``, then doubling up to ``max_backoff_s``."""

    attempts: int = 4
    backoff_s: float = 0.5
    max_backoff_s: float = 8.0
    max_retry_after_s: float = 60.0  # a longer Retry-After is cut to this

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("RetryPolicy.attempts must be at least 1")
        if min(self.backoff_s, self.max_backoff_s, self.max_retry_after_s) < 0:
            raise ValueError("RetryPolicy waits cannot be negative")

    def backoff(self, attempt: int) -> float:
        """Wait after failed try number ``attempt`` (1-based): "equal jitter", half fixed and
        half random, so it still grows with each try."""
        ceiling = min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1))
        return ceiling / 2 + random.uniform(0, ceiling / 2)

    def wait(self, attempt: int, retry_after_s: float | None) -> float:
        if retry_after_s is not None:
            return min(max(retry_after_s, 0.0), self.max_retry_after_s)
        return self.backoff(attempt)


def retry_after(response: httpx.Response) -> float | None:
    """``Retry-After`` in seconds (delta-seconds or an HTTP date), or None."""
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def retryable_error(exc: httpx.TransportError, idempotent: bool) -> bool:
    """A failed connect never reached the server; anything later may have (a read timeout on a
    generation that is still running), so only idempotent requests go again."""
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout):
        return True
    return idempotent

"""Delivering one webhook event: signed, through the egress policy, retried with backoff.

Retried: connection errors, timeouts, unresolvable hosts, 408, 429 and 5xx, after an exponential
backoff with jitter (``Retry-After`` honoured, up to the longest backoff). Not retried: 410 Gone
(the receiver asks us to stop), other 4xx, 3xx (redirects are not followed) and URLs the policy
refuses. Each attempt carries the same ``webhook-id`` and a fresh timestamp and signature.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

import httpx

from safegen.delivery.outcomes import retry_after_s  # Retry-After is read one way everywhere
from safegen.egress import PinnedClient
from safegen.errors import HostUnresolvable, TargetRejected
from safegen.jobs.model import WebhookEvent
from safegen.jobs.signing import signed_headers
from safegen.metrics import Metrics, status_class

logger = logging.getLogger("safegen.webhooks")

Outcome = Literal["delivered", "gone", "refused", "rejected", "exhausted"]
RETRIED_STATUSES = frozenset({408, 429})
USER_AGENT = "safegen-webhooks"


@dataclass(frozen=True)
class WebhookConfig:
    key: bytes  # the secret's bytes (see signing.parse_secret)
    max_attempts: int
    backoff_base_s: float
    backoff_max_s: float


def backoff_s(attempt: int, base_s: float, max_s: float, rng: Callable[[], float]) -> float:
    """Wait after failed attempt number ``attempt`` (1-based): "equal jitter", half of the
    exponential step fixed and half random, so retries spread out but still grow."""
    step = min(max_s, base_s * 2 ** (attempt - 1))
    return step / 2 + rng() * step / 2


class WebhookSender:
    """Sends events with a :class:`PinnedClient` whose policy is the webhook one."""

    def __init__(
        self,
        client: PinnedClient,
        config: WebhookConfig,
        metrics: Metrics,
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.client = client
        self.config = config
        self.metrics = metrics
        self._sleep = sleep
        self._rng = rng

    async def aclose(self) -> None:
        await self.client.aclose()

    async def deliver(self, event: WebhookEvent) -> Outcome:
        """Send ``event`` until it is accepted, refused for good or attempts run out."""
        outcome: Outcome = "exhausted"
        for attempt in range(1, self.config.max_attempts + 1):
            verdict, status, wait_hint = await self._attempt(event, attempt)
            self.metrics.webhook_attempts.labels(status_class=status_class(status)).inc()
            if verdict != "retry":
                outcome = verdict
                break
            if attempt == self.config.max_attempts:
                break
            wait = backoff_s(attempt, self.config.backoff_base_s, self.config.backoff_max_s,
                             self._rng)
            if wait_hint is not None:
                wait = min(wait_hint, self.config.backoff_max_s)
            await self._sleep(wait)
        self.metrics.webhooks.labels(outcome=outcome).inc()
        level = logging.INFO if outcome == "delivered" else logging.WARNING
        logger.log(level, "webhook %s for job %s: %s", event.message_id, event.job_id, outcome,
                   extra={"job_id": event.job_id, "webhook_event": event.event})
        return outcome

    async def _attempt(
        self, event: WebhookEvent, attempt: int
    ) -> tuple[Outcome | Literal["retry"], int, float | None]:
        """(verdict, HTTP status or 0, Retry-After seconds)."""
        try:
            target = await self.client.resolve(event.url)
        except HostUnresolvable:
            return "retry", 0, None
        except TargetRejected as exc:
            logger.warning("webhook %s refused by the egress policy: %s", event.message_id,
                           exc.message)
            return "rejected", 0, None
        headers = {
            **signed_headers(self.config.key, event.message_id, int(time.time()), event.body),
            "content-type": "application/json", "user-agent": USER_AGENT,
        }
        request = self.client.build_request(target, "POST", headers=headers, content=event.body)
        try:
            async with self.client.host_slot(target):
                response = await self.client.send(target, request)
                try:
                    status = response.status_code
                    hint = retry_after_s(response.headers.get("retry-after"), time.time())
                finally:
                    await response.aclose()  # the answer's body is not needed
        except httpx.HTTPError as exc:
            logger.info("webhook %s attempt %d to %s: %s", event.message_id, attempt,
                        target.host, type(exc).__name__)
            return "retry", 0, None
        logger.info("webhook %s attempt %d to %s: %d", event.message_id, attempt, target.host,
                    status)
        if 200 <= status < 300:
            return "delivered", status, None
        if status == 410:
            return "gone", status, None
        if status in RETRIED_STATUSES or status >= 500:
            return "retry", status, hint
        return "refused", status, None

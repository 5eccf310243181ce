"""The contract between the jobs service, its workers and a job store (in memory or Redis).

A worker *takes* a claim (a job handed to it, or one taken over from a worker that stopped
renewing its lease), *begins* it (queued -> running), *renews* the lease while it runs and
*finishes* it: the terminal state, the webhook event and the release of the claim happen in one
step, so a crash leaves either the claim (taken again later) or the finished job with its event.
Webhook events are claimed, renewed and released the same way, by any process.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

from safegen.jobs.model import JobRecord, WebhookEvent

BeginOutcome = Literal["started", "resumed", "skip"]


@dataclass(frozen=True)
class QueueLimits:
    max_queued: int
    max_in_flight_per_key: int
    result_ttl_s: float
    lease_s: float


@dataclass(frozen=True)
class Claim:
    """A job handed to one worker. ``deliveries`` counts how many times it was handed out."""

    entry_id: str
    job_id: str
    deliveries: int = 1


@dataclass(frozen=True)
class WebhookClaim:
    entry_id: str
    event: WebhookEvent
    deliveries: int = 1


class JobQueue(Protocol):
    """Where jobs wait, who runs them, and what became of them."""

    durable: bool  # survives a restart of this process

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def submit(self, record: JobRecord) -> None:
        """Record a queued job; raise ``Overloaded`` (queue full) or ``TooManyJobs`` (key)."""

    async def load(self, job_id: str) -> JobRecord | None: ...

    async def cancel(self, record: JobRecord, event: WebhookEvent | None) -> str:
        """Cancel ``record`` if still queued; return the status it has afterwards."""

    async def take(self, consumer: str, block_s: float) -> Claim | None: ...

    async def begin(
        self, claim: Claim, consumer: str, started: JobRecord, event: WebhookEvent | None
    ) -> BeginOutcome:
        """Mark the job running (or note that it is resumed); ``skip`` when there is nothing left
        to do (canceled, finished or expired), in which case the claim is released."""

    async def renew(self, claim: Claim, consumer: str) -> bool:
        """Extend the lease; False when another worker has taken the job over."""

    async def finish(self, claim: Claim, done: JobRecord, event: WebhookEvent | None) -> bool:
        """Store the terminal state and event and release the claim; False if already final."""

    async def take_webhook(self, consumer: str, block_s: float) -> WebhookClaim | None: ...

    async def renew_webhook(self, claim: WebhookClaim, consumer: str) -> bool: ...

    async def release_webhook(self, claim: WebhookClaim) -> None: ...

    async def depth(self) -> int:
        """Jobs waiting to start (not counting running ones)."""

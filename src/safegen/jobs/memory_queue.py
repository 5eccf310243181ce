"""Jobs in this process's memory: no Redis needed, but nothing survives a restart."""

from __future__ import annotations

import asyncio
import time

from safegen.errors import Overloaded
from safegen.jobs.errors import TooManyJobs
from safegen.jobs.model import TERMINAL, JobRecord, WebhookEvent
from safegen.jobs.queue import BeginOutcome, Claim, QueueLimits, WebhookClaim


class MemoryJobQueue:
    """A :class:`~safegen.jobs.queue.JobQueue` for one process. Finished jobs are forgotten
    ``result_ttl_s`` after they end."""

    durable = False

    def __init__(self, limits: QueueLimits) -> None:
        self.limits = limits
        self._records: dict[str, JobRecord] = {}
        self._expires: dict[str, float] = {}
        self._waiting: asyncio.Queue[str] = asyncio.Queue()
        self._webhooks: asyncio.Queue[WebhookEvent] = asyncio.Queue()
        self._queued = 0
        self._next_entry = 0

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def _forget_expired(self) -> None:
        now = time.monotonic()
        for job_id in [j for j, at in self._expires.items() if at <= now]:
            self._records.pop(job_id, None)
            del self._expires[job_id]

    async def submit(self, record: JobRecord) -> None:
        self._forget_expired()
        if self._queued >= self.limits.max_queued:
            raise Overloaded(
                f"the job queue is full ({self.limits.max_queued} jobs waiting, "
                "SAFEGEN_JOBS_MAX_QUEUED); retry later", retry_after_s=5,
            )
        mine = sum(1 for r in self._records.values()
                   if r.owner == record.owner and r.status not in TERMINAL)
        if mine >= self.limits.max_in_flight_per_key:
            raise TooManyJobs(
                f"this API key has {mine} jobs queued or running, the limit "
                f"(SAFEGEN_JOBS_MAX_IN_FLIGHT_PER_KEY); retry when one has finished",
                retry_after_s=5,
            )
        self._records[record.id] = record
        self._queued += 1
        self._waiting.put_nowait(record.id)

    async def load(self, job_id: str) -> JobRecord | None:
        self._forget_expired()
        return self._records.get(job_id)

    def _settle(self, done: JobRecord, event: WebhookEvent | None) -> None:
        self._records[done.id] = done
        self._expires[done.id] = time.monotonic() + self.limits.result_ttl_s
        if event is not None:
            self._webhooks.put_nowait(event)

    async def cancel(self, record: JobRecord, event: WebhookEvent | None) -> str:
        current = self._records.get(record.id)
        if current is None or current.status != "queued":
            return current.status if current else "expired"
        self._queued -= 1
        self._settle(record, event)
        return record.status

    async def take(self, consumer: str, block_s: float) -> Claim | None:
        try:
            job_id = await asyncio.wait_for(self._waiting.get(), block_s)
        except asyncio.TimeoutError:
            return None
        self._next_entry += 1
        return Claim(str(self._next_entry), job_id)

    async def begin(
        self, claim: Claim, consumer: str, started: JobRecord, event: WebhookEvent | None
    ) -> BeginOutcome:
        current = self._records.get(claim.job_id)
        if current is None or current.status != "queued":
            return "skip"
        self._queued -= 1
        self._records[claim.job_id] = started
        if event is not None:
            self._webhooks.put_nowait(event)
        return "started"

    async def renew(self, claim: Claim, consumer: str) -> bool:
        return True

    async def finish(self, claim: Claim, done: JobRecord, event: WebhookEvent | None) -> bool:
        current = self._records.get(claim.job_id)
        if current is None or current.status in TERMINAL:
            return False
        self._settle(done, event)
        return True

    async def take_webhook(self, consumer: str, block_s: float) -> WebhookClaim | None:
        try:
            event = await asyncio.wait_for(self._webhooks.get(), block_s)
        except asyncio.TimeoutError:
            return None
        return WebhookClaim(event.message_id, event)

    async def renew_webhook(self, claim: WebhookClaim, consumer: str) -> bool:
        return True

    async def release_webhook(self, claim: WebhookClaim) -> None:
        return None

    async def depth(self) -> int:
        return self._queued

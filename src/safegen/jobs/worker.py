"""The loops a process runs: take jobs and run them, deliver webhook events, report depth.

A job's lease is renewed while it runs; a process that stops (SIGTERM) takes no new job and
lets running ones finish within the grace period; one that dies (kill -9) stops renewing, and
another worker takes the job over once the lease has run out. Any loop that meets an error logs
it, waits a moment and goes on: one Redis hiccup never stops a worker for good.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from safegen.errors import SafegenError
from safegen.jobs.codec import decode_job, error_result, outcome_result, result_size
from safegen.jobs.model import JobRecord, WebhookEvent
from safegen.jobs.queue import Claim, JobQueue, WebhookClaim
from safegen.jobs.webhooks import WebhookSender
from safegen.metrics import Metrics
from safegen.services.generate_service import GenerateService

logger = logging.getLogger("safegen.jobs")

ERROR_PAUSE_S = 1.0  # after an unexpected error in a loop, before trying again
DEPTH_EVERY_S = 5.0


@dataclass(frozen=True)
class WorkerConfig:
    lease_s: float
    max_attempts: int
    concurrency: int
    webhook_senders: int
    max_result_bytes: int

    @property
    def block_s(self) -> float:
        """How long one read waits for new work before looking for stale claims again."""
        return max(0.05, min(self.lease_s / 3, 5.0))


def consumer_name() -> str:
    """Unique per process start, readable in Redis: host, pid and a random suffix."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class JobWorker:
    """Runs jobs from ``queue`` through ``service`` (None: this process only sends webhooks)."""

    def __init__(
        self,
        queue: JobQueue,
        service: GenerateService | None,
        sender: WebhookSender | None,
        config: WorkerConfig,
        metrics: Metrics,
    ) -> None:
        self.queue = queue
        self.service = service
        self.sender = sender
        self.config = config
        self.metrics = metrics
        self.consumer = consumer_name()
        self._loops: list[asyncio.Task[None]] = []
        self._running: set[asyncio.Task[None]] = set()  # jobs
        self._sending: set[asyncio.Task[None]] = set()  # webhook deliveries
        self._stopping = False

    async def start(self) -> None:
        if self.service is not None:
            for _ in range(self.config.concurrency):
                self._spawn(self._job_loop)
        if self.sender is not None:
            for _ in range(self.config.webhook_senders):
                self._spawn(self._webhook_loop)
        self._spawn(self._depth_loop)
        logger.info("job worker %s started (%s queue)", self.consumer,
                    "durable" if self.queue.durable else "in-process")

    def _spawn(self, loop: Callable[[], Awaitable[None]]) -> None:
        self._loops.append(asyncio.create_task(self._forever(loop)))

    async def stop(self, grace_s: float) -> None:
        """Take nothing new; give running jobs ``grace_s`` to finish, then stop everything."""
        self._stopping = True
        deadline = time.monotonic() + grace_s
        if self._running:
            logger.info("waiting for %d running job(s)", len(self._running))
            await asyncio.wait(set(self._running), timeout=grace_s)
        # Their webhook events too, within what is left (durable queues hand the rest on).
        left = deadline - time.monotonic()
        if self._sending and left > 0:
            await asyncio.wait(set(self._sending), timeout=left)
        tasks = [*self._loops, *self._running, *self._sending]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _forever(self, loop: Callable[[], Awaitable[None]]) -> None:
        while not self._stopping:
            try:
                await loop()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("job worker loop failed; going on")
                await asyncio.sleep(ERROR_PAUSE_S)

    async def _depth_loop(self) -> None:
        self.metrics.jobs_queue_depth.set(await self.queue.depth())
        await asyncio.sleep(DEPTH_EVERY_S)

    async def _job_loop(self) -> None:
        claim = await self.queue.take(self.consumer, self.config.block_s)
        if claim is None:
            return
        # A task of its own, so stop() can wait for it while the loops are cancelled.
        task = asyncio.create_task(self._run(claim))
        self._running.add(task)
        task.add_done_callback(self._running.discard)
        await asyncio.shield(task)

    async def _renew_while(self, renew: Callable[[], Awaitable[bool]], what: str) -> None:
        while True:
            await asyncio.sleep(self.config.lease_s / 3)
            try:
                if not await renew():
                    logger.warning("lost the lease on %s; another worker has taken it", what)
                    return
            except Exception:
                logger.warning("could not renew the lease on %s", what, exc_info=True)

    async def _run(self, claim: Claim) -> None:
        record = await self.queue.load(claim.job_id)
        if record is None:  # expired while it waited: nothing left to run or report
            await self.queue.finish(claim, _placeholder(claim), None)
            return
        if claim.deliveries > self.config.max_attempts:
            self.metrics.jobs_reclaimed.inc()
            await self._finish(claim, record, "failed", None, {
                "code": "worker_lost",
                "message": f"the job was started {claim.deliveries - 1} times and its worker "
                "stopped each time (SAFEGEN_JOBS_MAX_ATTEMPTS); it is not tried again",
            })
            return
        now = time.time()
        started = record.replace(status="running", started_at=record.started_at or now)
        begun = await self.queue.begin(
            claim, self.consumer, started, WebhookEvent.for_job(started, "start")
        )
        if begun == "skip":
            return
        if begun == "resumed" or claim.deliveries > 1:
            self.metrics.jobs_reclaimed.inc()
        else:
            self.metrics.job_wait.observe(max(0.0, now - record.created_at))
        logger.info("job %s %s by %s (delivery %d)", claim.job_id, begun, self.consumer,
                    claim.deliveries, extra={"job_id": claim.job_id})
        renewer = asyncio.create_task(self._renew_while(
            lambda: self.queue.renew(claim, self.consumer), f"job {claim.job_id}"
        ))
        try:
            status, data, error = await self._generate(started)
        finally:
            renewer.cancel()
        await self._finish(claim, started, status, data, error)

    async def _generate(self, record: JobRecord) -> tuple[str, dict | None, dict | None]:
        assert self.service is not None
        try:
            # Admission checks the delivery target again: the URL may have expired while the job
            # waited. The job counts against its submitter's share (``client``, set by the route)
            # like a /generate request.
            outcome = await self.service.submit(decode_job(record.job))
        except asyncio.CancelledError:
            raise  # stopping: the claim stays, and another worker takes the job over
        except Exception as exc:
            if not isinstance(exc, SafegenError):
                logger.exception("job %s failed", record.id, extra={"job_id": record.id})
            return "failed", None, error_result(exc)
        if outcome.nsfw:
            self.metrics.nsfw_flagged.labels(route="/v1/generations").inc()
        status, data, error = outcome_result(outcome)
        size = result_size(data, error)
        if size > self.config.max_result_bytes:
            return "failed", None, {
                "code": "result_too_large",
                "message": f"the result is {size} bytes, over the limit of "
                f"{self.config.max_result_bytes} (SAFEGEN_JOBS_MAX_RESULT_BYTES); "
                "use response_format=s3 for large images",
            }
        return status, data, error

    async def _finish(
        self, claim: Claim, record: JobRecord, status: str, data: dict | None,
        error: dict | None,
    ) -> None:
        done = record.replace(status=status, completed_at=time.time(), data=data, error=error)
        if await self.queue.finish(claim, done, WebhookEvent.for_job(done, "completed")):
            self.metrics.jobs.labels(status=status).inc()
            self.metrics.job_latency.labels(status=status).observe(
                max(0.0, done.completed_at - done.created_at)  # type: ignore[operator]
            )
            logger.info("job %s %s", done.id, status, extra={"job_id": done.id})

    async def _webhook_loop(self) -> None:
        claim = await self.queue.take_webhook(self.consumer, self.config.block_s)
        if claim is None:
            return
        task = asyncio.create_task(self._send(claim))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)
        await asyncio.shield(task)

    async def _send(self, claim: WebhookClaim) -> None:
        assert self.sender is not None
        renewer = asyncio.create_task(self._renew_while(
            lambda: self.queue.renew_webhook(claim, self.consumer),
            f"webhook {claim.event.message_id}",
        ))
        try:
            await self.sender.deliver(claim.event)
        finally:
            renewer.cancel()
        await self.queue.release_webhook(claim)


def _placeholder(claim: Claim) -> JobRecord:
    """A stand-in for a job that no longer exists, only to release its claim."""
    return JobRecord(id=claim.job_id, owner="", job={}, created_at=0.0, urls={},
                     status="failed", completed_at=0.0)

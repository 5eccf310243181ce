"""What the jobs routes call: submit, read and cancel jobs on behalf of one API key."""

from __future__ import annotations

import time

from safegen.egress import PinnedClient
from safegen.errors import InvalidInput
from safegen.jobs.codec import encode_job
from safegen.jobs.errors import JobNotCancelable, JobNotFound
from safegen.jobs.model import EVENTS, JobRecord, WebhookEvent, is_job_id, new_job_id
from safegen.jobs.queue import JobQueue
from safegen.services.generate_service import GenerateJob


class JobService:
    """Jobs are visible to the key that created them only; to any other key they do not exist.

    ``webhooks`` is None when no signing secret is configured: jobs asking for one are refused.
    """

    def __init__(self, queue: JobQueue, webhooks: PinnedClient | None) -> None:
        self.queue = queue
        self.webhooks = webhooks

    async def check_webhook(self, url: str, events: list[str]) -> None:
        """Refuse a webhook the service would not send (egress policy, unknown events)."""
        if self.webhooks is None:
            raise InvalidInput(
                "webhooks are not configured on this service (SAFEGEN_WEBHOOK_SECRET)",
                field="webhook",
            )
        unknown = sorted(set(events) - set(EVENTS))
        if unknown or not events:
            raise InvalidInput(
                f"webhook_events_filter must be a non-empty list of: {', '.join(EVENTS)}",
                field="webhook_events_filter",
            )
        try:
            await self.webhooks.resolve(url)
        except InvalidInput as exc:
            exc.field = "webhook"
            raise

    async def submit(
        self, job: GenerateJob, owner: str, base_url: str, webhook: str | None,
        events: list[str],
    ) -> JobRecord:
        """Record the job (durably, with Redis) before returning it."""
        job_id = new_job_id()
        own = f"{base_url.rstrip('/')}/v1/generations/{job_id}"
        record = JobRecord(
            id=job_id, owner=owner, job=encode_job(job), created_at=time.time(),
            urls={"get": own, "cancel": f"{own}/cancel"}, webhook=webhook,
            events=tuple(dict.fromkeys(events)),
        )
        await self.queue.submit(record)
        return record

    async def get(self, job_id: str, owner: str) -> JobRecord:
        record = await self.queue.load(job_id) if is_job_id(job_id) else None
        if record is None or record.owner != owner:
            raise JobNotFound(f"no job {job_id!r} for this API key", field="id")
        return record

    async def cancel(self, job_id: str, owner: str) -> JobRecord:
        record = await self.get(job_id, owner)
        if record.status == "queued":
            canceled = record.replace(status="canceled", completed_at=time.time())
            status = await self.queue.cancel(canceled, WebhookEvent.for_job(canceled, "completed"))
            if status == "canceled":
                return canceled
            record = await self.get(job_id, owner)
        raise JobNotCancelable(
            f"job {job_id} is {record.status}; only a queued job can be canceled", field="id"
        )

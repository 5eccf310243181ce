"""Builds the jobs feature from settings and ties its life to the app's lifespan."""

from __future__ import annotations

from contextlib import AsyncExitStack

import httpx

from safegen.egress import EgressPolicy, PinnedClient, SystemResolver
from safegen.jobs.memory_queue import MemoryJobQueue
from safegen.jobs.queue import JobQueue, QueueLimits
from safegen.jobs.service import JobService
from safegen.jobs.signing import parse_secret
from safegen.jobs.webhooks import WebhookConfig, WebhookSender
from safegen.jobs.worker import JobWorker, WorkerConfig
from safegen.metrics import Metrics
from safegen.services.generate_service import GenerateService
from safegen.settings import Settings

WEBHOOK_SENDERS = 4  # concurrent deliveries per process; each waits on the queue when idle


def webhook_policy(settings: Settings) -> EgressPolicy:
    return EgressPolicy.from_settings(settings, "webhook")


def webhook_client(settings: Settings, resolver: SystemResolver) -> PinnedClient:
    timeout = httpx.Timeout(settings.webhook_timeout_s, connect=settings.webhook_connect_timeout_s)
    return PinnedClient(
        webhook_policy(settings), resolver, timeout=timeout,
        max_per_host=settings.webhook_max_per_host,
    )


def build_queue(settings: Settings) -> JobQueue:
    limits = QueueLimits(
        max_queued=settings.jobs_max_queued,
        max_in_flight_per_key=settings.jobs_max_in_flight_per_key,
        result_ttl_s=settings.jobs_result_ttl_s,
        lease_s=settings.jobs_lease_s,
    )
    if settings.jobs_storage.startswith("memory://"):
        return MemoryJobQueue(limits)
    from safegen.jobs.redis_queue import RedisJobQueue

    return RedisJobQueue(settings.jobs_storage, limits)


async def start_jobs(
    stack: AsyncExitStack, settings: Settings, service: GenerateService, metrics: Metrics
) -> JobService:
    """Start the queue, the workers and the webhook sender; on exit, stop them in reverse."""
    queue = build_queue(settings)
    await queue.start()
    stack.push_async_callback(queue.close)
    sender = None
    client = None
    if settings.webhook_secret:
        # Its own lookup threads: slow webhook DNS never delays upload lookups, and vice versa.
        resolver = SystemResolver(settings.dns_threads, settings.dns_timeout_s)
        stack.callback(resolver.close)
        client = webhook_client(settings, resolver)
        stack.push_async_callback(client.aclose)
        sender = WebhookSender(client, WebhookConfig(
            key=parse_secret(settings.webhook_secret),
            max_attempts=settings.webhook_max_attempts,
            backoff_base_s=settings.webhook_backoff_base_s,
            backoff_max_s=settings.webhook_backoff_max_s,
        ), metrics)
    worker = JobWorker(queue, service, sender, WorkerConfig(
        lease_s=settings.jobs_lease_s, max_attempts=settings.jobs_max_attempts,
        concurrency=settings.jobs_concurrency, webhook_senders=WEBHOOK_SENDERS,
        max_result_bytes=settings.jobs_max_result_bytes,
    ), metrics)
    await worker.start()
    stack.push_async_callback(worker.stop, settings.shutdown_grace_s)
    return JobService(queue, client)

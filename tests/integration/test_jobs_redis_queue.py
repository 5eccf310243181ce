"""The Redis job queue against a real redis-server: hand-out, leases, take-over, limits, and the
one-step finish (result + webhook event + release)."""

from __future__ import annotations

import asyncio
import time

import pytest

from safegen.errors import Overloaded
from safegen.jobs.errors import TooManyJobs
from safegen.jobs.model import JobRecord, WebhookEvent
from safegen.jobs.queue import QueueLimits
from safegen.jobs.redis_queue import RedisJobQueue

LEASE_S = 0.3


def limits(**overrides: float) -> QueueLimits:
    values = {"max_queued": 100, "max_in_flight_per_key": 100, "result_ttl_s": 60,
              "lease_s": LEASE_S, **overrides}
    return QueueLimits(**values)  # type: ignore[arg-type]


def record(job_id: str, owner: str = "k1", webhook: str | None = None) -> JobRecord:
    return JobRecord(id=job_id.ljust(32, "0"), owner=owner, job={"x": 1}, created_at=time.time(),
                     urls={"get": "g", "cancel": "c"}, webhook=webhook)


@pytest.fixture
async def queue(redis_server):
    q = RedisJobQueue(redis_server.url, limits())
    await q.start()
    yield q
    await q.close()


async def test_a_job_goes_to_one_worker_and_finishes_with_its_event(queue):
    job = record("a", webhook="https://hooks.example.com/x")
    await queue.submit(job)
    assert await queue.depth() == 1
    claim = await queue.take("w1", 1)
    assert claim is not None
    assert claim.job_id == job.id
    assert claim.deliveries == 1
    assert await queue.take("w2", 0.05) is None  # nobody else gets it
    assert await queue.depth() == 0
    started = job.replace(status="running", started_at=time.time())
    assert await queue.begin(claim, "w1", started, None) == "started"
    done = started.replace(status="succeeded", completed_at=time.time(), data={"image_hash": "h"})
    event = WebhookEvent.for_job(done, "completed")
    assert await queue.finish(claim, done, event)
    assert await queue.load(job.id) == done
    sent = await queue.take_webhook("w2", 1)
    assert sent is not None
    assert sent.event == event
    await queue.release_webhook(sent)
    await asyncio.sleep(LEASE_S * 1.5)
    assert await queue.take_webhook("w3", 0.05) is None  # released: never sent again
    assert await queue.take("w3", 0.05) is None


async def test_a_lease_not_renewed_is_taken_over_and_a_renewed_one_is_not(queue):
    kept, lost = record("kept"), record("lost")
    await queue.submit(kept)
    await queue.submit(lost)
    claims = {c.job_id: c for c in [await queue.take("w1", 1), await queue.take("w1", 1)]}
    for job in (kept, lost):
        await queue.begin(claims[job.id], "w1", job.replace(status="running"), None)
    for _ in range(4):  # w1 renews one lease only, for twice the lease time
        await asyncio.sleep(LEASE_S / 2)
        assert await queue.renew(claims[kept.id], "w1")
    taken = await queue.take("w2", 0.05)
    assert taken is not None
    assert (taken.job_id, taken.deliveries) == (lost.id, 2)
    assert await queue.take("w2", 0.05) is None  # the renewed one stays with w1
    assert not await queue.renew(claims[lost.id], "w1")  # w1 learns it lost that one
    assert await queue.begin(taken, "w2", lost.replace(status="running"), None) == "resumed"
    # The late worker's finish changes nothing once the new owner has finished.
    done = lost.replace(status="succeeded", completed_at=time.time())
    assert await queue.finish(taken, done, None)
    assert not await queue.finish(claims[lost.id], done.replace(status="failed"), None)
    assert (await queue.load(lost.id)).status == "succeeded"


async def test_cancel_only_while_queued_and_the_worker_skips_it(queue):
    job = record("c", webhook="https://hooks.example.com/x")
    await queue.submit(job)
    canceled = job.replace(status="canceled", completed_at=time.time())
    assert await queue.cancel(canceled, WebhookEvent.for_job(canceled, "completed")) == "canceled"
    assert await queue.depth() == 0
    assert await queue.take("w1", 0.05) is None  # its entry is gone from the queue
    assert await queue.cancel(canceled, None) == "canceled"  # already final: unchanged
    event = await queue.take_webhook("w1", 1)
    assert event is not None
    assert b'"status":"canceled"' in event.event.body


async def test_limits_queue_length_and_per_key(redis_server):
    q = RedisJobQueue(redis_server.url, limits(max_queued=3, max_in_flight_per_key=2))
    await q.start()
    try:
        await q.submit(record("1", "k1"))
        await q.submit(record("2", "k1"))
        with pytest.raises(TooManyJobs, match="SAFEGEN_JOBS_MAX_IN_FLIGHT_PER_KEY"):
            await q.submit(record("3", "k1"))
        await q.submit(record("4", "k2"))
        with pytest.raises(Overloaded, match="SAFEGEN_JOBS_MAX_QUEUED") as refused:
            await q.submit(record("5", "k3"))
        assert not isinstance(refused.value, TooManyJobs)
        # A job that starts no longer waits; a finished one no longer counts for its key.
        claim = await q.take("w", 1)
        first = await q.load(claim.job_id)
        await q.begin(claim, "w", first.replace(status="running"), None)
        await q.submit(record("5", "k3"))
        await q.finish(claim, first.replace(status="succeeded", completed_at=time.time()), None)
        await q.take("w", 1)  # room in the queue again; k1 now has one job in flight, not two
        await q.submit(record("6", "k1"))
    finally:
        await q.close()


async def test_storage_down_is_a_clear_503(redis_server):
    q = RedisJobQueue(redis_server.url, limits())
    await q.start()
    redis_server.stop()
    try:
        with pytest.raises(Overloaded, match="job storage is unreachable"):
            await q.submit(record("x"))
    finally:
        await q.close()

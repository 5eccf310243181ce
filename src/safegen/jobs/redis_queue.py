"""Jobs in Redis, shared by every replica: a stream read through a consumer group.

Why Redis streams and not a job library: a consumer group already is the protocol this needs.
``XREADGROUP`` hands each job to exactly one worker and keeps it in the group's pending list
until ``XACK``; a worker that dies leaves it there, and ``XAUTOCLAIM`` with a minimum idle time
hands it to another worker once the lease has run out. A live worker renews its lease with
``XCLAIM ... JUSTID`` (which resets the idle time), and the pending list counts deliveries, so a
job that kills every worker that takes it stops after ``max_attempts``. The job libraries that
fit an asyncio service (arq, saq, taskiq) either re-run a lost job only after the job's whole
timeout rather than a renewable lease, or add a second worker process model; the stream needs no
new dependency (redis-py is already used for rate limits) and no process outside the service.

State changes are small Lua scripts, so each is atomic: a job is recorded and queued in one step,
and finishing stores the result, queues the webhook event and acknowledges the claim in one step
(a crash leaves the claim pending, to be taken again, or everything done, never half).
Webhook events use a second stream and group, so retries never hold a generation slot.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import AsyncIterator
from typing import Any, cast

import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from safegen.errors import Overloaded
from safegen.jobs.errors import StorageUnavailable, TooManyJobs
from safegen.jobs.model import JobRecord, WebhookEvent
from safegen.jobs.queue import BeginOutcome, Claim, QueueLimits, WebhookClaim

logger = logging.getLogger("safegen.jobs.redis")

PREFIX = "safegen:{jobs}:"  # one hash tag: every key in one cluster slot, so scripts may use all
JOBS_STREAM = PREFIX + "stream"
WEBHOOK_STREAM = PREFIX + "webhooks"
WORKERS_GROUP = "workers"
SENDERS_GROUP = "senders"

_SUBMIT = """
local waiting = redis.call('XLEN', KEYS[1]) - redis.call('XPENDING', KEYS[1], ARGV[1])[1]
if waiting >= tonumber(ARGV[6]) then return {-1, waiting} end
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', ARGV[8])
local mine = redis.call('ZCARD', KEYS[3])
if mine >= tonumber(ARGV[7]) then return {-2, mine} end
local entry = redis.call('XADD', KEYS[1], '*', 'job', ARGV[2])
redis.call('HSET', KEYS[2], 'id', ARGV[2], 'owner', ARGV[3], 'status', 'queued',
           'created_at', ARGV[4], 'spec', ARGV[5], 'entry', entry)
redis.call('EXPIRE', KEYS[2], ARGV[9])
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[2])
return {1, 0}
"""

_EVENT = """
local function event(stream, id, url, job, name, body)
  if id ~= '' then
    redis.call('XADD', stream, '*', 'id', id, 'url', url, 'job', job, 'event', name, 'body', body)
  end
end
"""

_BEGIN = _EVENT + """
local status = redis.call('HGET', KEYS[1], 'status')
if status == 'queued' then
  redis.call('HSET', KEYS[1], 'status', 'running', 'started_at', ARGV[4], 'worker', ARGV[3])
  event(KEYS[3], ARGV[5], ARGV[6], ARGV[7], 'start', ARGV[8])
  return 'started'
elseif status == 'running' then
  redis.call('HSET', KEYS[1], 'worker', ARGV[3])
  return 'resumed'
end
redis.call('XACK', KEYS[2], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[2], ARGV[2])
return 'skip'
"""

_FINISH = _EVENT + """
local status = redis.call('HGET', KEYS[1], 'status')
local done = 0
if status == 'queued' or status == 'running' then
  redis.call('HSET', KEYS[1], 'status', ARGV[3], 'completed_at', ARGV[4], 'result', ARGV[5])
  redis.call('EXPIRE', KEYS[1], ARGV[6])
  redis.call('ZREM', KEYS[3], ARGV[7])
  event(KEYS[4], ARGV[8], ARGV[9], ARGV[7], 'completed', ARGV[10])
  done = 1
end
redis.call('XACK', KEYS[2], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[2], ARGV[2])
return done
"""

_CANCEL = _EVENT + """
local status = redis.call('HGET', KEYS[1], 'status')
if status ~= 'queued' then return status or 'expired' end
redis.call('HSET', KEYS[1], 'status', 'canceled', 'completed_at', ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('ZREM', KEYS[3], ARGV[3])
local entry = redis.call('HGET', KEYS[1], 'entry')
if entry then redis.call('XDEL', KEYS[2], entry) end
event(KEYS[4], ARGV[4], ARGV[5], ARGV[3], 'completed', ARGV[6])
return 'canceled'
"""

# XCLAIM by the owner itself resets the idle time; checking ownership first means a worker whose
# lease already ran out never takes the job back from the worker that took it over.
_RENEW = """
local mine = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1, ARGV[2])
if #mine == 0 then return 0 end
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3], 'JUSTID')
return 1
"""


def _job_key(job_id: str) -> str:
    return f"{PREFIX}job:{job_id}"


def _owner_key(owner: str) -> str:
    return f"{PREFIX}owner:{owner or '-'}"


def _moment(epoch_s: float | None) -> str:
    return "" if epoch_s is None else repr(epoch_s)


def _event_args(event: WebhookEvent | None) -> list[str]:
    if event is None:
        return ["", "", ""]
    return [event.message_id, event.url, event.body.decode()]


@contextlib.asynccontextmanager
async def _storage_errors() -> AsyncIterator[None]:
    try:
        yield
    except RedisError:
        logger.warning("job storage (Redis) unreachable", exc_info=True)
        raise StorageUnavailable(
            "job storage is unreachable right now; nothing was recorded, retry later",
            retry_after_s=5,
        ) from None


class RedisJobQueue:
    """A :class:`~safegen.jobs.queue.JobQueue` on one Redis (or a cluster slot)."""

    durable = True

    def __init__(self, url: str, limits: QueueLimits) -> None:
        self.limits = limits
        self._lease_ms = max(1, int(limits.lease_s * 1000))
        self._ttl = max(1, math.ceil(limits.result_ttl_s))
        self._redis = aioredis.from_url(
            url, decode_responses=True, socket_connect_timeout=5,
            # Blocking reads wait at most a few seconds (see the worker); leave room above that.
            socket_timeout=30, health_check_interval=30,
        )
        self._submit = self._redis.register_script(_SUBMIT)
        self._begin = self._redis.register_script(_BEGIN)
        self._finish = self._redis.register_script(_FINISH)
        self._cancel = self._redis.register_script(_CANCEL)
        self._renew = self._redis.register_script(_RENEW)
        self._cursors: dict[str, str] = {}

    async def start(self) -> None:
        for stream, group in ((JOBS_STREAM, WORKERS_GROUP), (WEBHOOK_STREAM, SENDERS_GROUP)):
            try:
                await self._redis.xgroup_create(stream, group, id="0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    async def close(self) -> None:
        await self._redis.aclose()

    async def submit(self, record: JobRecord) -> None:
        stale_before = record.created_at - self.limits.result_ttl_s
        async with _storage_errors():
            code, count = await self._submit(
                keys=[JOBS_STREAM, _job_key(record.id), _owner_key(record.owner)],
                args=[WORKERS_GROUP, record.id, record.owner, repr(record.created_at),
                      record.spec_json(), self.limits.max_queued,
                      self.limits.max_in_flight_per_key, repr(stale_before), self._ttl],
            )
        if code == -1:
            raise Overloaded(
                f"the job queue is full ({count} jobs waiting, limit "
                f"{self.limits.max_queued}: SAFEGEN_JOBS_MAX_QUEUED); retry later",
                retry_after_s=5,
            )
        if code == -2:
            raise TooManyJobs(
                f"this API key has {count} jobs queued or running, the limit "
                "(SAFEGEN_JOBS_MAX_IN_FLIGHT_PER_KEY); retry when one has finished",
                retry_after_s=5,
            )

    async def load(self, job_id: str) -> JobRecord | None:
        async with _storage_errors():
            fields = cast(dict[str, str], await self._redis.hgetall(_job_key(job_id)))
        return JobRecord.from_fields(fields) if fields.get("spec") else None

    async def cancel(self, record: JobRecord, event: WebhookEvent | None) -> str:
        async with _storage_errors():
            status = await self._cancel(
                keys=[_job_key(record.id), JOBS_STREAM, _owner_key(record.owner), WEBHOOK_STREAM],
                args=[_moment(record.completed_at), self._ttl, record.id, *_event_args(event)],
            )
        return str(status)

    async def _claim_stale(
        self, stream: str, group: str, consumer: str
    ) -> tuple[str, dict[str, str], int] | None:
        """An entry whose holder stopped renewing its lease, taken over by ``consumer``."""
        cursor = self._cursors.get(stream, "0-0")
        reply: Any = await self._redis.xautoclaim(
            stream, group, consumer, self._lease_ms, start_id=cursor, count=1
        )
        self._cursors[stream] = reply[0]
        if not reply[1]:
            return None
        entry_id, fields = reply[1][0]
        pending = await self._redis.xpending_range(stream, group, entry_id, entry_id, 1)
        deliveries = int(pending[0]["times_delivered"]) if pending else 1
        logger.warning("took over %s entry %s (delivered %d times)", stream, entry_id, deliveries)
        return entry_id, fields, deliveries

    async def _next(
        self, stream: str, group: str, consumer: str, block_s: float
    ) -> tuple[str, dict[str, str], int] | None:
        stale = await self._claim_stale(stream, group, consumer)
        if stale is not None:
            return stale
        reply: Any = await self._redis.xreadgroup(
            group, consumer, {stream: ">"}, count=1, block=max(1, int(block_s * 1000))
        )
        if not reply:
            return None
        entry_id, fields = reply[0][1][0]
        return entry_id, fields, 1

    async def take(self, consumer: str, block_s: float) -> Claim | None:
        got = await self._next(JOBS_STREAM, WORKERS_GROUP, consumer, block_s)
        if got is None:
            return None
        entry_id, fields, deliveries = got
        return Claim(entry_id, fields.get("job", ""), deliveries)

    async def begin(
        self, claim: Claim, consumer: str, started: JobRecord, event: WebhookEvent | None
    ) -> BeginOutcome:
        outcome = await self._begin(
            keys=[_job_key(claim.job_id), JOBS_STREAM, WEBHOOK_STREAM],
            args=[WORKERS_GROUP, claim.entry_id, consumer, _moment(started.started_at),
                  *_event_args(event)[:2], claim.job_id, _event_args(event)[2]],
        )
        return str(outcome)  # type: ignore[return-value]

    async def renew(self, claim: Claim, consumer: str) -> bool:
        return bool(await self._renew(
            keys=[JOBS_STREAM], args=[WORKERS_GROUP, consumer, claim.entry_id]
        ))

    async def finish(self, claim: Claim, done: JobRecord, event: WebhookEvent | None) -> bool:
        return bool(await self._finish(
            keys=[_job_key(claim.job_id), JOBS_STREAM, _owner_key(done.owner), WEBHOOK_STREAM],
            args=[WORKERS_GROUP, claim.entry_id, done.status, _moment(done.completed_at),
                  done.result_json(), self._ttl, done.id, *_event_args(event)],
        ))

    async def take_webhook(self, consumer: str, block_s: float) -> WebhookClaim | None:
        got = await self._next(WEBHOOK_STREAM, SENDERS_GROUP, consumer, block_s)
        if got is None:
            return None
        entry_id, fields, deliveries = got
        event = WebhookEvent(fields["id"], fields["url"], fields["body"].encode(),
                             fields.get("job", ""), fields.get("event", "completed"))
        return WebhookClaim(entry_id, event, deliveries)

    async def renew_webhook(self, claim: WebhookClaim, consumer: str) -> bool:
        return bool(await self._renew(
            keys=[WEBHOOK_STREAM], args=[SENDERS_GROUP, consumer, claim.entry_id]
        ))

    async def release_webhook(self, claim: WebhookClaim) -> None:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.xack(WEBHOOK_STREAM, SENDERS_GROUP, claim.entry_id)
            pipe.xdel(WEBHOOK_STREAM, claim.entry_id)
            await pipe.execute()

    async def depth(self) -> int:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.xlen(JOBS_STREAM)
            pipe.xpending(JOBS_STREAM, WORKERS_GROUP)
            length, pending = await pipe.execute()
        return max(0, int(length) - int(pending["pending"]))


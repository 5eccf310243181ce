"""The uploader: PUT (or presigned POST) bytes to a client-chosen URL, with retries and checks.

Uploads go through one :class:`~safegen.egress.PinnedClient`: each target is checked against the
policy and resolved once, connections go to the checked address only and are never shared between
host names. Each attempt has a deadline (waiting for a connection included) and each upload has
one too, capped by the presigned URL's expiry, so a storage that stalls cannot hold a job, its
image or a connection for longer than the operator allows.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Any
from urllib.parse import quote

import httpx

from safegen.delivery import outcomes
from safegen.delivery.config import UploadConfig
from safegen.delivery.outcomes import AttemptRecord, UploadResult
from safegen.delivery.presigned import expires_at, post_policy_expires_at, redact
from safegen.egress import PinnedClient, ResolvedTarget, Resolver
from safegen.errors import HostUnresolvable, TooLarge, UploadTargetRejected

logger = logging.getLogger("safegen.delivery")

_ERROR_BODY_LIMIT = 16 * 1024  # enough for an S3 error document; the rest is never read


def content_md5_header(body: bytes) -> str:
    """The ``Content-MD5`` value for ``body`` (base64 of the binary digest). Sending it is the
    caller's choice: on a presigned URL it must have been signed."""
    return base64.b64encode(_md5(body)).decode("ascii")


def _md5(body: bytes) -> bytes:
    # MD5 here names and checks content (as S3 does); it protects nothing.
    return hashlib.md5(body, usedforsecurity=False).digest()


@dataclass
class _Upload:
    """One upload's fixed facts, passed to the retry loop."""

    url: str  # where the request goes (checked, then pinned)
    result_url: str  # where the object lives afterwards
    md5_hex: str
    expiry: datetime | None
    build: Callable[[ResolvedTarget], httpx.Request]
    renamed: bool = False
    sent_headers: bool = False
    target: ResolvedTarget | None = None  # resolved once, then every retry goes to this address


class Uploader:
    """Delivers bytes to presigned URLs. Use ``async with`` or call :meth:`aclose`.

    ``resolver`` looks up host names (the service passes its shared
    :class:`~safegen.egress.SystemResolver`); ``verify`` is httpx's TLS verification (tests pass
    their CA). ``sleep``, ``clock`` (wall-clock seconds, for URL expiry) and ``monotonic`` (for
    the upload deadline) are injectable so tests need not wait.
    """

    def __init__(
        self,
        config: UploadConfig,
        resolver: Resolver,
        *,
        verify: Any = True,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self._client = PinnedClient(
            config.policy, resolver, timeout=config.timeout(),
            max_per_host=config.max_per_host, verify=verify,
        )
        self._sleep = sleep
        self._clock = clock
        self._monotonic = monotonic

    async def __aenter__(self) -> Uploader:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._client.aclose()

    async def prepare(self, url: str) -> ResolvedTarget:
        """Refuse a URL before any work is done (policy, DNS, expiry) and resolve it once.

        Pass the result to :meth:`put` or :meth:`post_form` (with :func:`retarget` for a renamed
        object). Raises :class:`~safegen.errors.TargetRejected`.
        """
        expiry = expires_at(url)
        if expiry is not None and expiry.timestamp() <= self._clock():
            raise UploadTargetRejected(outcomes.expired_reason(expiry, before_retry=False))
        return await self._client.resolve(url)

    async def put(
        self, target: str | ResolvedTarget, body: bytes,
        headers: Mapping[str, str] | None = None, *, renamed: bool = False,
    ) -> UploadResult:
        """PUT ``body`` to ``target`` (a URL, or what :meth:`prepare` returned for it).

        Sends no ``Content-Type`` unless ``headers`` has one. ``renamed`` says the caller changed
        the URL's object name, which sharpens the reason given for a 403. Raises
        :class:`~safegen.errors.TargetRejected` if the URL is not allowed and :class:`TooLarge`
        for an oversized body; every other failure is in the result.
        """
        self._check_size(body)
        extra = dict(headers or {})

        def build(resolved: ResolvedTarget) -> httpx.Request:
            return self._client.build_request(resolved, "PUT", headers=extra, content=body)

        url = _url_of(target)
        job = _Upload(url, url, _md5(body).hex(), expires_at(url), build, renamed=renamed,
                      sent_headers=bool(extra), target=_resolved(target))
        return await self._deliver(job)

    async def post_form(
        self, target: str | ResolvedTarget, fields: Mapping[str, str], key: str, body: bytes,
        filename: str,
    ) -> UploadResult:
        """Upload with an S3 presigned POST: the policy ``fields``, then ``key``, then ``file``.

        ``key`` replaces any ``key`` in ``fields`` (the policy must allow it, e.g. with
        ``["starts-with", "$key", "prefix/"]``). The result's ``url`` assumes path-style or
        bucket-host POST URLs: ``{url without trailing /}/{key}``.
        """
        self._check_size(body)
        form = {k: v for k, v in fields.items() if k.lower() not in ("key", "file")}
        form["key"] = key
        types = [v for k, v in fields.items() if k.lower() == "content-type"]
        content_type = types[0] if types else "application/octet-stream"
        files = {"file": (filename, body, content_type)}

        def build(resolved: ResolvedTarget) -> httpx.Request:
            return self._client.build_request(resolved, "POST", data=form, files=files)

        url = _url_of(target)
        result_url = f"{url.split('?', 1)[0].rstrip('/')}/{quote(key, safe='/')}"
        job = _Upload(url, result_url, _md5(body).hex(), post_policy_expires_at(dict(fields)),
                      build, sent_headers=True, target=_resolved(target))
        return await self._deliver(job)

    def _check_size(self, body: bytes) -> None:
        if len(body) > self.config.max_body_bytes:
            raise TooLarge(
                f"upload body is larger than {self.config.max_body_bytes} bytes "
                "(SAFEGEN_UPLOAD_MAX_BYTES)"
            )

    async def _deliver(self, job: _Upload) -> UploadResult:
        started = self._monotonic()
        result = await self._attempts(job, started + self.config.deadline_s)
        result.elapsed_s = self._monotonic() - started
        # The caller logs the outcome with its own context; this line is for debugging the uploader.
        logger.debug("upload %s: status=%s attempts=%d elapsed=%.2fs url=%s reason=%s",
            "ok" if result.ok else "failed", result.status, len(result.attempts),
            result.elapsed_s, redact(job.url), result.reason)
        return result

    async def _attempts(self, job: _Upload, deadline: float) -> UploadResult:
        result = UploadResult(ok=False, status=0, url=job.result_url)
        backoff = self.config.backoff_s
        for number in range(len(backoff) + 1):
            if job.expiry is not None and job.expiry.timestamp() <= self._clock():
                result.reason = outcomes.expired_reason(job.expiry, before_retry=False)
                return result
            left = deadline - self._monotonic()
            if left <= 0:
                result.reason = f"{result.reason}; {self._deadline_reason()}"
                return result
            retryable, retry_after = await self._bounded_attempt(job, result, left)
            if result.ok or not retryable or number == len(backoff):
                return result
            delay = backoff[number]
            if retry_after is not None:
                if retry_after > self.config.max_retry_after_s:
                    result.reason = f"{result.reason}; it asked to wait {retry_after:.0f} s"
                    return result
                delay = max(delay, retry_after)
            if job.expiry is not None and job.expiry.timestamp() <= self._clock() + delay:
                result.reason = outcomes.expired_reason(job.expiry, before_retry=True)
                return result
            if self._monotonic() + delay >= deadline:
                result.reason = f"{result.reason}; {self._deadline_reason()}"
                return result
            logger.debug("upload retry in %.1fs url=%s", delay, redact(job.url))
            await self._sleep(delay)
        return result

    def _deadline_reason(self) -> str:
        return (f"no time left for another attempt within the upload deadline of "
                f"{self.config.deadline_s:g} s (SAFEGEN_UPLOAD_DEADLINE_S)")

    async def _bounded_attempt(
        self, job: _Upload, result: UploadResult, left_s: float
    ) -> tuple[bool, float | None]:
        """One attempt within its own timeout and what is left of the upload's deadline."""
        limit = min(self.config.attempt_timeout_s, left_s)
        t0 = time.monotonic()
        try:
            return await asyncio.wait_for(self._attempt(job, result, t0), limit)
        except asyncio.TimeoutError:
            result.attempts.append(AttemptRecord(0, time.monotonic() - t0, "attempt_timeout"))
            result.status = 0
            result.reason = (
                f"the storage did not answer attempt {len(result.attempts)} within {limit:g} s "
                "(SAFEGEN_UPLOAD_ATTEMPT_TIMEOUT_S)"
            )
            return True, None

    async def _attempt(
        self, job: _Upload, result: UploadResult, t0: float
    ) -> tuple[bool, float | None]:
        """Make one attempt and record it in ``result``. Returns ``(retryable, retry_after)``."""

        def record(status: int, kind: str | None) -> None:
            result.attempts.append(AttemptRecord(status, time.monotonic() - t0, kind))

        if job.target is None:
            try:
                # Policy violations raise here, before the first byte is sent.
                job.target = await self._client.resolve(job.url)
            except HostUnresolvable:
                record(0, "dns")
                result.reason = outcomes.describe_transport("dns", len(result.attempts))
                return True, None
        try:
            request = job.build(job.target)
        except ValueError:  # e.g. a header httpx cannot encode: the same on every attempt
            record(0, "invalid_request")
            result.reason = "the upload request could not be built: a header is not valid HTTP"
            return False, None
        try:
            async with self._client.host_slot(job.target):
                response = await self._client.send(job.target, request)
                try:
                    head = await _read_head(response)
                finally:
                    await response.aclose()
        except httpx.TransportError as exc:
            kind, retryable = outcomes.transport_error_kind(exc)
            record(0, kind)
            result.reason = outcomes.describe_transport(kind, len(result.attempts))
            return retryable, None
        status = result.status = response.status_code
        if 200 <= status < 300:
            etag = response.headers.get("etag")
            result.etag = etag.strip('"') if etag else None
            if self.config.verify_etag and outcomes.etag_mismatch(etag, job.md5_hex):
                record(status, "etag_mismatch")
                result.reason = (
                    f"storage answered ETag {result.etag}, not the MD5 of the bytes sent "
                    f"({job.md5_hex}): the stored object may differ (or the bucket uses SSE-KMS)"
                )
                return False, None
            record(status, None)
            result.ok, result.reason = True, None
            return False, None
        record(status, "http_status")
        code = outcomes.s3_error_code(head)
        result.reason = outcomes.describe_status(
            status, code, renamed=job.renamed, sent_headers=job.sent_headers
        )
        retry_after = outcomes.retry_after_s(response.headers.get("retry-after"), self._clock())
        return outcomes.is_retryable_status(status), retry_after


def retarget(target: ResolvedTarget, url: str) -> ResolvedTarget:
    """``target`` for another object on the same host (a renamed URL): no second lookup."""
    return dataclasses.replace(target, url=url)


def _url_of(target: str | ResolvedTarget) -> str:
    return target if isinstance(target, str) else target.url


def _resolved(target: str | ResolvedTarget) -> ResolvedTarget | None:
    return None if isinstance(target, str) else target


async def _read_head(response: httpx.Response) -> bytes:
    """The first bytes of a streamed body, enough to find an S3 error code."""
    head = b""
    async for chunk in response.aiter_bytes():
        head += chunk
        if len(head) >= _ERROR_BODY_LIMIT:
            break
    return head[:_ERROR_BODY_LIMIT]

"""The uploader: PUT (or presigned POST) bytes to a client-chosen URL, with retries and checks.

One ``httpx.AsyncClient`` is shared by all uploads. Each upload checks its target against the
policy first, then connects to the address that was checked (DNS rebinding), retries only what may
pass on a second try, never follows a redirect, and stops when the presigned URL runs out.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from urllib.parse import quote

import httpx

from safegen.delivery import outcomes
from safegen.delivery.config import UploadConfig
from safegen.delivery.outcomes import AttemptRecord, UploadResult
from safegen.delivery.presigned import expires_at, post_policy_expires_at, redact
from safegen.delivery.targets import (
    HostUnresolvable,
    ResolvedTarget,
    Resolver,
    resolve_target,
)
from safegen.errors import TooLarge, UploadTargetRejected

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

    ``client`` may be shared with other code and is then not closed here; if omitted, one is made
    with the config's timeouts, no redirects and no proxies from the environment. ``sleep`` and
    ``clock`` (wall-clock seconds, used for URL expiry) are injectable so tests need not wait.
    """

    def __init__(
        self,
        config: UploadConfig | None = None,
        *,
        client: httpx.AsyncClient | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.time,
        resolver: Resolver | None = None,
    ) -> None:
        self.config = config or UploadConfig()
        self._owns_client = client is None
        self._client = client or httpx.AsyncClient(
            timeout=self.config.timeout(), follow_redirects=False, trust_env=False
        )
        self._sleep = sleep
        self._clock = clock
        self._resolver = resolver

    async def __aenter__(self) -> Uploader:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP client if this uploader made it."""
        if self._owns_client:
            await self._client.aclose()

    async def check_target(self, url: str) -> ResolvedTarget:
        """Refuse a URL before any work is done: policy, DNS, and expiry. Raises
        :class:`UploadTargetRejected`."""
        expiry = expires_at(url)
        if expiry is not None and expiry.timestamp() <= self._clock():
            raise UploadTargetRejected(outcomes.expired_reason(expiry, before_retry=False))
        return await resolve_target(url, self.config.policy, resolver=self._resolver)

    async def put(
        self, url: str, body: bytes, headers: Mapping[str, str] | None = None, *,
        renamed: bool = False,
    ) -> UploadResult:
        """PUT ``body`` to ``url``. Sends no ``Content-Type`` unless ``headers`` has one.

        ``renamed`` says the caller changed the URL's object name, which sharpens the reason
        given for a 403. Raises :class:`UploadTargetRejected` if the URL is not allowed and
        :class:`TooLarge` for an oversized body; every other failure is in the result.
        """
        self._check_size(body)
        # Host is ours to set: it must name the URL's host while we connect to the checked address.
        extra = {k: v for k, v in (headers or {}).items() if k.lower() != "host"}

        def build(target: ResolvedTarget) -> httpx.Request:
            return self._request(target, "PUT", {**extra, "Host": target.host_header},
                                 content=body)

        job = _Upload(url, url, _md5(body).hex(), expires_at(url), build,
                      renamed=renamed, sent_headers=bool(extra))
        return await self._deliver(job)

    async def post_form(
        self, url: str, fields: Mapping[str, str], key: str, body: bytes, filename: str
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

        def build(target: ResolvedTarget) -> httpx.Request:
            return self._request(target, "POST", {"Host": target.host_header}, data=form,
                                 files=files)

        result_url = f"{url.split('?', 1)[0].rstrip('/')}/{quote(key, safe='/')}"
        job = _Upload(url, result_url, _md5(body).hex(),
                      post_policy_expires_at(dict(fields)), build, sent_headers=True)
        return await self._deliver(job)

    def _check_size(self, body: bytes) -> None:
        if len(body) > self.config.max_body_bytes:
            raise TooLarge(f"upload body is larger than {self.config.max_body_bytes} bytes")

    def _request(self, target: ResolvedTarget, method: str, headers: dict[str, str],
                 **kwargs: object) -> httpx.Request:
        extensions = {"sni_hostname": target.sni_hostname} if target.sni_hostname else {}
        return self._client.build_request(
            method, target.pinned_url(), headers=headers, timeout=self.config.timeout(),
            extensions=extensions, **kwargs,  # type: ignore[arg-type]
        )

    async def _deliver(self, job: _Upload) -> UploadResult:
        started = time.monotonic()
        result = await self._attempts(job)
        result.elapsed_s = time.monotonic() - started
        # The caller logs the outcome with its own context; this line is for debugging the uploader.
        logger.debug("upload %s: status=%s attempts=%d elapsed=%.2fs url=%s reason=%s",
            "ok" if result.ok else "failed", result.status, len(result.attempts),
            result.elapsed_s, redact(job.url), result.reason)
        return result

    async def _attempts(self, job: _Upload) -> UploadResult:
        result = UploadResult(ok=False, status=0, url=job.result_url)
        backoff = self.config.backoff_s
        for number in range(len(backoff) + 1):
            if job.expiry is not None and job.expiry.timestamp() <= self._clock():
                result.reason = outcomes.expired_reason(job.expiry, before_retry=False)
                return result
            retryable, retry_after = await self._attempt(job, result)
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
            logger.debug("upload retry in %.1fs url=%s", delay, redact(job.url))
            await self._sleep(delay)
        return result

    async def _attempt(self, job: _Upload, result: UploadResult) -> tuple[bool, float | None]:
        """Make one attempt and record it in ``result``. Returns ``(retryable, retry_after)``."""
        t0 = time.monotonic()

        def record(status: int, kind: str | None) -> None:
            result.attempts.append(AttemptRecord(status, time.monotonic() - t0, kind))

        if job.target is None:
            try:
                # Policy violations raise here, before the first byte is sent.
                job.target = await resolve_target(
                    job.url, self.config.policy, resolver=self._resolver
                )
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
            response = await self._client.send(request, stream=True, follow_redirects=False)
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


async def _read_head(response: httpx.Response) -> bytes:
    """The first bytes of a streamed body, enough to find an S3 error code."""
    head = b""
    async for chunk in response.aiter_bytes():
        head += chunk
        if len(head) >= _ERROR_BODY_LIMIT:
            break
    return head[:_ERROR_BODY_LIMIT]

"""What one upload attempt came to, whether to try again, and how to explain a failure to a person.

Kept apart from the HTTP code so the retry rules can be read (and tested) on their own. Reasons
name the storage's status and S3 error code but never echo its body, which for a signature error
contains the string that was signed and the access key id.
"""

from __future__ import annotations

import re
import ssl
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime

import httpx

_S3_CODE = re.compile(rb"<Code>([A-Za-z.]{1,64})</Code>")
_PLAIN_MD5 = re.compile(r"[0-9a-f]{32}")


@dataclass(frozen=True)
class AttemptRecord:
    """One try: the status answered (0 = no response) and, if it failed, a short kind of error."""

    status: int
    elapsed_s: float
    error_kind: str | None = None


@dataclass
class UploadResult:
    """The outcome of an upload, with every attempt. ``reason`` says in words why it failed."""

    ok: bool
    status: int  # the last status answered; 0 if no response ever came
    attempts: list[AttemptRecord] = field(default_factory=list)
    url: str = ""  # where the object now lives (a presigned URL: never log it unredacted)
    etag: str | None = None
    reason: str | None = None
    elapsed_s: float = 0.0

    @property
    def retries(self) -> int:
        """Attempts after the first."""
        return max(0, len(self.attempts) - 1)


def is_retryable_status(status: int) -> bool:
    """Timeouts, throttling and server errors may pass; other answers will not change."""
    return status in (408, 429) or (status >= 500 and status not in (501, 505))


def transport_error_kind(exc: httpx.TransportError) -> tuple[str, bool]:
    """``(error_kind, retryable)`` for an exception raised before a response came."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ssl.SSLCertVerificationError):
            return "tls_verification", False  # the same certificate will fail again
        cause = cause.__cause__ or cause.__context__
    kinds: tuple[tuple[type[httpx.TransportError], str], ...] = (
        (httpx.ConnectTimeout, "connect_timeout"),
        (httpx.ReadTimeout, "read_timeout"),
        (httpx.WriteTimeout, "write_timeout"),
        (httpx.PoolTimeout, "pool_timeout"),
        (httpx.ConnectError, "connect_error"),
        (httpx.RemoteProtocolError, "connection_dropped"),
        (httpx.ReadError, "read_error"),
        (httpx.WriteError, "write_error"),
        (httpx.NetworkError, "network_error"),
    )
    for cls, kind in kinds:
        if isinstance(exc, cls):
            return kind, True
    return "transport_error", False  # e.g. an unsupported protocol: our fault, not the network's


def s3_error_code(body: bytes) -> str | None:
    """The ``<Code>`` of an S3 XML error body, if there is one."""
    match = _S3_CODE.search(body)
    return match.group(1).decode() if match else None


def retry_after_s(value: str | None, now: float) -> float | None:
    """Seconds asked for by a ``Retry-After`` header (delta seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, when.timestamp() - now)


def etag_mismatch(etag: str | None, md5_hex: str) -> bool:
    """Whether a plain-MD5 ETag (32 hex digits, not multipart or KMS-shaped) differs from ours."""
    if etag is None:
        return False
    tag = etag.strip().removeprefix("W/").strip('"').lower()
    return bool(_PLAIN_MD5.fullmatch(tag)) and tag != md5_hex


def describe_status(status: int, code: str | None, *, renamed: bool, sent_headers: bool) -> str:
    """Words for a person about a refused upload."""
    label = f"HTTP {status}" + (f" {code}" if code else "")
    if 300 <= status < 400:
        return f"storage answered {label}, a redirect; redirects are not followed"
    if status == 403 and renamed and code in (None, "SignatureDoesNotMatch"):
        return (
            f"storage refused the upload ({label}): the URL's signature does not cover the renamed "
            "object key. Upload to the key exactly as signed (as-signed mode), or have the client "
            "issue a presigned POST whose policy allows the new key (POST mode)"
        )
    if status == 403 and code == "SignatureDoesNotMatch" and sent_headers:
        return (
            f"storage refused the upload ({label}): headers such as Content-Type, Content-MD5 or "
            "x-amz-acl must be exactly those the URL was signed with"
        )
    if status == 403 and code == "AccessDenied":
        return f"storage refused the upload ({label}): the URL may have expired or lacks permission"
    if status == 403:
        return f"storage refused the upload ({label}): the URL's signature was not accepted"
    if is_retryable_status(status):
        return f"storage kept failing: {label} on the last attempt"
    return f"storage refused the upload ({label})"


def describe_transport(kind: str, attempts: int) -> str:
    """Words for a person when no response came."""
    if kind == "tls_verification":
        return "the storage's TLS certificate could not be verified"
    if kind == "dns":
        return f"the upload host could not be resolved ({attempts} attempts)"
    words = kind.replace("_", " ")
    return f"no answer from storage after {attempts} attempt(s): {words}"


def expired_reason(expiry: datetime, *, before_retry: bool) -> str:
    """Words for a person when the presigned URL's lifetime stops the upload."""
    stamp = expiry.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    if before_retry:
        return f"the presigned URL expires at {stamp}, before the next retry could be made"
    return f"the presigned URL expired at {stamp}; nothing more was sent"

"""The uploader's settings: where bytes may go, the retry schedule, timeouts and limits.

Every value comes from :class:`~safegen.settings.Settings` (``SAFEGEN_UPLOAD_*``), the one place
defaults are written; this object only carries them and refuses combinations that cannot work.
"""

from __future__ import annotations

from dataclasses import dataclass

import httpx

from safegen.egress import EgressPolicy
from safegen.settings import Settings


@dataclass(frozen=True)
class UploadConfig:
    """Retry schedule, timeouts and limits of uploads. ``backoff_s`` has one delay per retry."""

    policy: EgressPolicy
    backoff_s: tuple[float, ...]
    connect_timeout_s: float
    io_timeout_s: float  # longest wait for one read or write
    attempt_timeout_s: float  # one attempt, from waiting for a slot to the answer's first bytes
    deadline_s: float  # the whole upload, retries and backoff included
    max_per_host: int  # uploads at once to one host
    max_body_bytes: int
    # A Retry-After longer than this stops retrying instead of holding the request open.
    max_retry_after_s: float
    # S3 answers an MD5 ETag for single-part uploads without SSE-KMS; turn off for KMS buckets.
    verify_etag: bool

    def __post_init__(self) -> None:
        # Refuse nonsense at start-up rather than at the first upload.
        if any(d < 0 for d in self.backoff_s):
            raise ValueError("backoff_s delays must not be negative")
        timeouts = (self.connect_timeout_s, self.io_timeout_s, self.attempt_timeout_s,
                    self.deadline_s)
        if any(t <= 0 for t in timeouts):
            raise ValueError("upload timeouts must be positive")
        if self.max_body_bytes <= 0 or self.max_retry_after_s < 0 or self.max_per_host < 1:
            raise ValueError(
                "max_body_bytes and max_per_host must be positive, max_retry_after_s not negative"
            )

    @classmethod
    def from_settings(cls, settings: Settings) -> UploadConfig:
        return cls(
            policy=EgressPolicy.from_settings(settings, "upload"),
            backoff_s=tuple(settings.upload_backoff_s),
            connect_timeout_s=settings.upload_connect_timeout_s,
            io_timeout_s=settings.upload_timeout_s,
            attempt_timeout_s=settings.upload_attempt_timeout_s,
            deadline_s=settings.upload_deadline_s,
            max_per_host=settings.upload_max_per_host,
            max_body_bytes=settings.upload_max_bytes,
            max_retry_after_s=settings.upload_max_retry_after_s,
            verify_etag=settings.upload_verify_etag,
        )

    def timeout(self) -> httpx.Timeout:
        """The httpx timeout for each step of one attempt (the attempt has its own deadline)."""
        return httpx.Timeout(
            connect=self.connect_timeout_s, read=self.io_timeout_s, write=self.io_timeout_s,
            pool=self.attempt_timeout_s,
        )

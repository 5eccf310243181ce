"""The uploader's settings: retry schedule, timeouts, limits and the target policy."""

from __future__ import annotations

from dataclasses import dataclass, field

import httpx

from safegen.delivery.targets import UploadTargetPolicy


@dataclass(frozen=True)
class UploadConfig:
    """Retry schedule, timeouts and limits. ``backoff_s`` has one delay per retry."""

    backoff_s: tuple[float, ...] = (1.0, 2.0, 4.0)
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 15.0
    write_timeout_s: float = 15.0
    pool_timeout_s: float = 5.0
    max_body_bytes: int = 32 * 1024 * 1024
    # A Retry-After longer than this stops retrying instead of holding the request open.
    max_retry_after_s: float = 8.0
    # S3 answers an MD5 ETag for single-part uploads without SSE-KMS; turn off for KMS buckets.
    verify_etag: bool = True
    policy: UploadTargetPolicy = field(default_factory=UploadTargetPolicy)

    def __post_init__(self) -> None:
        # Refuse nonsense at start-up rather than at the first upload.
        if any(d < 0 for d in self.backoff_s):
            raise ValueError("backoff_s delays must not be negative")
        timeouts = (self.connect_timeout_s, self.read_timeout_s, self.write_timeout_s,
                    self.pool_timeout_s)
        if any(t <= 0 for t in timeouts):
            raise ValueError("upload timeouts must be positive")
        if self.max_body_bytes <= 0 or self.max_retry_after_s < 0:
            raise ValueError("max_body_bytes must be positive, max_retry_after_s not negative")

    def timeout(self) -> httpx.Timeout:
        """The httpx timeout for one attempt."""
        return httpx.Timeout(
            connect=self.connect_timeout_s, read=self.read_timeout_s,
            write=self.write_timeout_s, pool=self.pool_timeout_s,
        )

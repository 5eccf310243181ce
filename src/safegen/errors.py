"""The domain's error hierarchy. The core raises these; the web edge maps them to HTTP in one place.

Messages are written for clients: they name the field or limit at fault and never carry exception
text from a library, a stack trace, a key or a presigned signature.
"""

from __future__ import annotations


class SafegenError(Exception):
    """Base class. ``code`` is a stable machine-readable identifier, ``message`` is for people."""

    code = "error"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class InvalidInput(SafegenError):
    """The request is well-formed but a value is not acceptable (HTTP 422/400)."""

    code = "invalid_input"


class ImageError(InvalidInput):
    """An uploaded image cannot be used: not an image, truncated, unsupported format."""

    code = "invalid_image"


class UnsupportedFormat(ImageError):
    code = "unsupported_format"


class UnsupportedInput(InvalidInput):
    """A kind of input this service does not judge (text sent for moderation) (HTTP 400)."""

    code = "unsupported_input"


class TooLarge(InvalidInput):
    """A size limit was exceeded (bytes, pixels, files, request body) (HTTP 413)."""

    code = "too_large"


class Overloaded(SafegenError):
    """The service is at capacity; the client should retry later (HTTP 503 + Retry-After)."""

    code = "overloaded"

    def __init__(self, message: str, *, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class TooManyJobs(Overloaded):
    """One client has as many jobs in flight as it may; the others are served (HTTP 429)."""

    code = "too_many_jobs"


class NotReady(SafegenError):
    """A component is not loaded, or the service is shutting down (HTTP 503)."""

    code = "not_ready"


class ModelUnavailable(SafegenError):
    """Weights are missing or cannot be loaded. The message says what to do."""

    code = "model_unavailable"


class InferenceFailed(SafegenError):
    """The model raised while scoring a batch (HTTP 503 for the images of that batch)."""

    code = "inference_failed"


class GenerationFailed(SafegenError):
    """The image generator raised (HTTP 500 with a fixed message)."""

    code = "generation_failed"


class TargetRejected(InvalidInput):
    """A URL the service would send bytes to or fetch from is not allowed: scheme, host, private
    address, expired (HTTP 422). ``code`` names the purpose (``upload_target_rejected``...)."""

    code = "target_rejected"

    def __init__(self, message: str, *, code: str | None = None, field: str | None = None) -> None:
        super().__init__(message, field=field)
        if code is not None:
            self.code = code


class HostUnresolvable(TargetRejected):
    """The host has no address right now (DNS failure or timeout). Unlike other rejections, worth
    a retry."""

    code = "host_unresolvable"


class UploadTargetRejected(TargetRejected):
    """A presigned upload URL that cannot be used: malformed signature parameters, expired."""

    code = "upload_target_rejected"

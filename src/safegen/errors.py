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


class TooLarge(InvalidInput):
    """A size limit was exceeded (bytes, pixels, files, request body) (HTTP 413)."""

    code = "too_large"


class Overloaded(SafegenError):
    """The service is at capacity; the client should retry later (HTTP 503 + Retry-After)."""

    code = "overloaded"

    def __init__(self, message: str, *, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


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


class UploadTargetRejected(InvalidInput):
    """The upload URL is not allowed: scheme, host, private address, expired (HTTP 422)."""

    code = "upload_target_rejected"

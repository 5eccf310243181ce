"""Typed errors of the client. Each API error carries the server's ``code``, ``message`` and
``request_id`` (quote it when reporting a problem)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from safegen.client.models import GenerateResult, ImageResult


class SafegenClientError(Exception):
    """Base of every error this client raises."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class APIError(SafegenClientError):
    """The server answered with an error status."""

    def __init__(
        self, status: int, code: str, message: str, *, field: str | None = None,
        request_id: str | None = None, retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.field = field
        self.request_id = request_id
        self.retry_after_s = retry_after_s

    def __str__(self) -> str:
        where = f", field {self.field}" if self.field else ""
        rid = f", request_id {self.request_id}" if self.request_id else ""
        return f"{self.status} {self.code}: {self.message}{where}{rid}"


class AuthenticationError(APIError):
    """401/403: the API key is missing or refused (never retried)."""


class RateLimited(APIError):
    """429 after every retry: the key's budget is spent."""


class ServiceUnavailable(APIError):
    """503 after every retry: the server is starting, stopping or overloaded."""


class UploadFailed(APIError):
    """``/generate`` made the image but could not deliver it (502); ``result`` has what was made."""

    def __init__(
        self, result: GenerateResult, status: int, code: str, message: str,
        *, request_id: str | None = None,
    ) -> None:
        super().__init__(status, code, message, request_id=request_id)
        self.result = result


class ConnectionFailed(SafegenClientError):
    """No answer from the server (refused, reset, timed out) after every retry."""


class IncompleteClassification(SafegenClientError):
    """A batch stopped part-way: ``results`` keeps what finished, in input order; the images that
    were never scored carry the error code ``not_classified``. ``cause`` is what stopped it."""

    def __init__(self, results: list[ImageResult], cause: SafegenClientError) -> None:
        done = sum(1 for r in results if r.error is None or r.error.code != "not_classified")
        super().__init__(
            f"classification stopped after {done} of {len(results)} images: {cause.message}"
        )
        self.results = results
        self.cause = cause


_BY_STATUS: dict[int, type[APIError]] = {
    401: AuthenticationError, 403: AuthenticationError, 429: RateLimited, 503: ServiceUnavailable,
}


def api_error(
    status: int, body: object, retry_after_s: float | None = None
) -> APIError:
    """Build the typed error for an error response body (``{"error": {...}}`` or anything else)."""
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        code = str(error.get("code") or f"http_{status}")
        message = str(error.get("message") or f"the server answered {status}")
        field, request_id = error.get("field"), error.get("request_id")
    else:
        code, message = f"http_{status}", f"the server answered {status}"
        field = request_id = None
    return _BY_STATUS.get(status, APIError)(
        status, code, message, field=field if isinstance(field, str) else None,
        request_id=request_id if isinstance(request_id, str) else None,
        retry_after_s=retry_after_s,
    )

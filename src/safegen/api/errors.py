"""The one place where domain errors become HTTP responses.

Clients get a stable code and a message written for them; unexpected exceptions are logged with the
request id and answered with a fixed message (no exception text, no stack trace).
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from safegen import errors
from safegen.jobs.errors import JobNotCancelable, JobNotFound

logger = logging.getLogger("safegen.api")

STATUS_BY_ERROR: list[tuple[type[errors.SafegenError], int]] = [
    (errors.TooLarge, 413),
    (errors.ImageError, 400),
    (errors.UnsupportedInput, 400),
    (errors.InvalidInput, 422),
    (JobNotFound, 404),
    (JobNotCancelable, 409),
    (errors.TooManyJobs, 429),
    (errors.Overloaded, 503),
    (errors.NotReady, 503),
    (errors.ModelUnavailable, 503),
    (errors.InferenceFailed, 503),
    (errors.GenerationFailed, 500),
]


def http_status(exc: errors.SafegenError) -> int:
    for error_type, status in STATUS_BY_ERROR:
        if isinstance(exc, error_type):
            return status
    return 500


def request_id(request: Request) -> str | None:
    return getattr(request.state, "request_id", None)


_REJECTIONS = {401, 413, 429, 503}  # refused before work: counted by reason


def error_response(
    request: Request, status: int, code: str, message: str, *, field: str | None = None,
    headers: dict[str, str] | None = None, extra: dict[str, object] | None = None,
) -> JSONResponse:
    metrics = getattr(request.app.state, "metrics", None)
    if status in _REJECTIONS and metrics is not None:
        metrics.rejections.labels(reason=code).inc()
    body: dict[str, object] = {"code": code, "message": message, "request_id": request_id(request)}
    if field is not None:
        body["field"] = field
    return JSONResponse({"error": body, **(extra or {})}, status_code=status, headers=headers)


async def _domain_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, errors.SafegenError)
    headers = None
    if isinstance(exc, errors.Overloaded):
        headers = {"Retry-After": str(exc.retry_after_s)}
    return error_response(
        request, http_status(exc), exc.code, exc.message, field=exc.field, headers=headers
    )


def _field_name(loc: tuple[object, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or "body"


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    problems = [
        {"field": _field_name(tuple(e.get("loc", ()))), "message": str(e.get("msg", "invalid"))}
        for e in exc.errors()
    ]  # the offending input is not echoed: it may hold a presigned signature
    first = problems[0] if problems else {"field": "body", "message": "invalid request"}
    return error_response(
        request, 422, "invalid_input", f"{first['field']}: {first['message']}",
        field=first["field"], extra={"detail": problems},
    )


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    detail = exc.detail
    if isinstance(detail, dict) and "code" in detail:
        code, message = str(detail["code"]), str(detail.get("message", ""))
    else:
        code, message = f"http_{exc.status_code}", str(detail)
    return error_response(
        request, exc.status_code, code, message, headers=dict(exc.headers or {})
    )


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(
        request, 500, "internal_error", "internal error; quote the request_id when reporting it"
    )


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(errors.SafegenError, _domain_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)

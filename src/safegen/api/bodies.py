"""Request bodies, read only once the caller is known and within its budget.

Routes declare no body parameter (FastAPI would read and parse it before any dependency runs,
authentication included); they call :func:`read_body` with a limit that fits their content and
parse JSON with :func:`parse_json`, off the event loop when the body is large.
"""

from __future__ import annotations

import asyncio
from typing import TypeVar

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

from safegen.errors import InvalidInput, TooLarge

Model = TypeVar("Model", bound=BaseModel)

# Parsing this much JSON takes well under a millisecond: not worth a thread hop.
_PARSE_INLINE_BYTES = 64 * 1024


async def read_body(request: Request, max_bytes: int, setting: str) -> bytes:
    """The whole body, refused with 413 as soon as it passes ``max_bytes`` (declared or sent)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise _too_large(max_bytes, setting)
    chunks: list[bytes] = []
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > max_bytes:
            raise _too_large(max_bytes, setting)
        chunks.append(chunk)
    return b"".join(chunks)


async def parse_json(raw: bytes, model: type[Model]) -> Model:
    """``raw`` validated as ``model``; errors are reported like FastAPI's, input never echoed."""
    try:
        if len(raw) <= _PARSE_INLINE_BYTES:
            return model.model_validate_json(raw)
        return await asyncio.to_thread(model.model_validate_json, raw)
    except ValidationError as exc:
        problems = exc.errors(include_input=False, include_url=False, include_context=False)
        if any(problem["type"] == "json_invalid" for problem in problems):
            raise InvalidInput("the body is not valid JSON", field="body") from None
        raise RequestValidationError(
            [{**problem, "loc": ("body", *problem["loc"])} for problem in problems[:20]]
        ) from None


def _too_large(max_bytes: int, setting: str) -> TooLarge:
    return TooLarge(f"request body is larger than {max_bytes} bytes ({setting})", field="body")

"""Request bodies (``safegen.api.bodies``): read within their limit, declared or streamed, and
parsed as JSON with errors that point into the body and never echo it."""

from __future__ import annotations

import pytest
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field, create_model
from starlette.requests import Request

from safegen.api.bodies import parse_json, read_body
from safegen.errors import InvalidInput, TooLarge


def request_with(chunks: list[bytes], content_length: int | None = None) -> Request:
    """A request whose body arrives in ``chunks``; ``state.unread`` holds those not yet read."""
    messages = [{"type": "http.request", "body": chunk, "more_body": i < len(chunks) - 1}
                for i, chunk in enumerate(chunks)]
    headers = [] if content_length is None else [(b"content-length", str(content_length).encode())]

    async def receive() -> dict[str, object]:
        return messages.pop(0)

    request = Request({"type": "http", "method": "POST", "path": "/generate",
                       "headers": headers, "query_string": b""}, receive)
    request.state.unread = messages
    return request


async def test_a_streamed_body_is_counted_across_its_chunks() -> None:
    # Each chunk is under the limit; together they pass it, and the reading stops there.
    request = request_with([b"a" * 6, b"b" * 6, b"c" * 6])
    with pytest.raises(TooLarge) as refused:
        await read_body(request, 10, "SAFEGEN_GENERATE_MAX_BODY_BYTES")
    assert refused.value.message == (
        "request body is larger than 10 bytes (SAFEGEN_GENERATE_MAX_BODY_BYTES)")
    assert refused.value.field == "body"
    assert len(request.state.unread) == 1  # the third chunk was never asked for


async def test_a_body_of_exactly_the_limit_is_read_whole() -> None:
    assert await read_body(request_with([b"a" * 4, b"", b"b" * 6], 10), 10, "S") == (
        b"a" * 4 + b"b" * 6)


async def test_a_declared_length_over_the_limit_is_refused_unread() -> None:
    request = request_with([b"a" * 11], content_length=11)
    with pytest.raises(TooLarge, match=r"^request body is larger than 10 bytes \(S\)$"):
        await read_body(request, 10, "S")
    assert len(request.state.unread) == 1


class Sized(BaseModel):
    count: int = Field(ge=1)


async def test_a_body_that_is_not_json_is_refused_saying_so() -> None:
    with pytest.raises(InvalidInput) as refused:
        await parse_json(b'{"count": ', Sized)
    assert (refused.value.message, refused.value.field) == ("the body is not valid JSON", "body")


async def test_validation_errors_point_into_the_body_and_never_echo_it() -> None:
    with pytest.raises(RequestValidationError) as refused:
        await parse_json(b'{"count": 0}', Sized)
    # Located under "body" like FastAPI's own errors; no input, context or documentation URL.
    assert refused.value.errors() == [{
        "type": "greater_than_equal", "loc": ("body", "count"),
        "msg": "Input should be greater than or equal to 1",
    }]


async def test_at_most_20_validation_errors_are_reported() -> None:
    many = create_model("Many", **{f"f{i}": (int, ...) for i in range(30)})
    with pytest.raises(RequestValidationError) as refused:
        await parse_json(b"{}", many)
    assert [error["loc"] for error in refused.value.errors()] == [
        ("body", f"f{i}") for i in range(20)]

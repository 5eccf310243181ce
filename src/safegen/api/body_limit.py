"""A pure ASGI middleware that caps request bodies before they are buffered.

Two checks, because a declared length can be absent (chunked uploads):

- a ``Content-Length`` above the limit is answered 413 without buffering the body (one up to
  ``DRAIN_FACTOR`` times the limit is read and dropped first, so the client can read the 413
  instead of getting a connection reset; a larger one is answered at once);
- otherwise ``receive`` is wrapped and the running total of body bytes is checked on every
  chunk, so a chunked upload is stopped as soon as it passes the limit, long before the app has
  buffered it.

When the stream passes the limit, :class:`BodyTooLarge` is raised out of ``receive`` inside the
app. Whatever the app does with it (FastAPI turns body-parsing errors into a 400, a handler might
answer 500), its response is suppressed and this middleware sends the 413 itself. If the app had
already started its response (streaming before reading the whole body), a 413 can no longer be
sent; the response is cut off, and the server closes the connection.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any

from safegen.errors import TooLarge

logger = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# A declared body up to this many times the limit is read and dropped before the 413 is sent.
DRAIN_FACTOR = 2
DRAIN_TIMEOUT_S = 5.0


class BodyTooLarge(TooLarge):
    """Raised from ``receive`` when the streamed body passes the limit."""


def _message(max_bytes: int) -> str:
    return f"request body exceeds SAFEGEN_MAX_REQUEST_BYTES ({max_bytes} bytes)"


class BodySizeLimitMiddleware:
    """Rejects request bodies larger than ``max_bytes`` with 413, declared or streamed.

    ``paths_prefixes`` limits the check to paths starting with one of them (all paths if None).
    ``on_reject`` is called once per refused request (e.g. to count it in a metric).
    """

    def __init__(
        self,
        app: ASGIApp,
        max_bytes: int,
        paths_prefixes: Sequence[str] | None = None,
        on_reject: Callable[[], None] | None = None,
    ) -> None:
        if max_bytes < 0:
            raise ValueError("max_bytes must be >= 0")
        self.app = app
        self.max_bytes = max_bytes
        self.paths_prefixes = tuple(paths_prefixes) if paths_prefixes is not None else None
        self.on_reject = on_reject

    def _applies(self, scope: Scope) -> bool:
        if scope["type"] != "http":
            return False
        if self.paths_prefixes is None:
            return True
        path = scope.get("path", "")
        return any(path.startswith(prefix) for prefix in self.paths_prefixes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self._applies(scope):
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            if declared <= DRAIN_FACTOR * self.max_bytes:
                await _drain(receive)
            await self._reject(send)
            return

        total = 0
        exceeded = False
        response_started = False

        async def limited_receive() -> Message:
            nonlocal total, exceeded
            if exceeded:
                # The app swallowed BodyTooLarge and reads on: the body is over.
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                total += len(message.get("body", b""))
                if total > self.max_bytes:
                    exceeded = True
                    raise BodyTooLarge(_message(self.max_bytes))
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal response_started
            if exceeded:
                return  # the 413 below is the answer, not whatever the app made of the error
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            # Whatever the app made of BodyTooLarge (re-raised, wrapped in its own error), the
            # cause is the oversized body and the answer is 413 while that is still possible.
            if not exceeded or response_started:
                raise
        if exceeded:
            if response_started:
                logger.info("request body passed the limit after the response started; cut off")
                return
            await self._reject(send)

    async def _reject(self, send: Send) -> None:
        if self.on_reject is not None:
            self.on_reject()
        body = json.dumps(
            {"error": {"code": "too_large", "message": _message(self.max_bytes)}}
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    # The unread rest of the body makes the connection unusable: close it.
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


async def _drain(receive: Receive) -> None:
    """Read and drop a body that is refused anyway, for at most ``DRAIN_TIMEOUT_S``.

    Closing a connection while the client is still sending makes the kernel answer with a reset,
    which throws away the 413 before the client reads it: the client sees "connection reset"
    instead of the reason. Only bodies up to ``DRAIN_FACTOR`` times the limit are drained (no
    more than a valid request may cost, and nothing is kept); larger ones are cut off at once.
    """

    async def read_all() -> None:
        while True:
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                return

    try:
        await asyncio.wait_for(read_all(), DRAIN_TIMEOUT_S)
    except asyncio.TimeoutError:
        logger.info("client kept sending a refused body for %.0f s; cut off", DRAIN_TIMEOUT_S)


def _content_length(scope: Scope) -> int | None:
    """The declared length; ``None`` if absent. A malformed value counts as absent here because
    the server (h11/httptools) has already refused it, and the streaming check still applies."""
    for name, value in scope.get("headers") or ():
        if name.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None

"""A real HTTP server on 127.0.0.1 whose answer to each request is scripted, for upload tests.

Each request takes the next :class:`Step` of the script (the last step repeats): answer a status,
wait before answering (to trip the client's timeout), hold the answer until the test sets an
event, or drop the connection unanswered. Every request is recorded with its headers
and body, and every answer sent in full too, so a test can wait for either event instead of
sleeping. Optionally serves TLS with a test CA.
"""

from __future__ import annotations

import dataclasses
import hashlib
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.support.tlscerts import TestCA


@dataclass(frozen=True)
class Step:
    """One scripted answer. A 2xx to a PUT without an ``ETag`` header gets the body's MD5."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    delay_s: float = 0.0  # wait this long before answering
    drop: bool = False  # close the connection without any answer
    trickle_s: float = 0.0  # send the body one byte per this many seconds (beats read timeouts)
    hold: threading.Event | None = None  # answer only once the test sets it (or at teardown)


@dataclass(frozen=True)
class Recorded:
    """A request as the server received it."""

    method: str
    target: str  # the raw request target: path and query exactly as sent
    headers: dict[str, str]  # names in lower case
    body: bytes
    at: float  # time.monotonic() when it arrived
    status: int = 0  # in ``FaultServer.answered``: the status sent back in full


class FaultServer:
    """The running server: ``url`` is its base, ``script()`` sets the answers."""

    def __init__(self, tls: ssl.SSLContext | None = None, host_name: str = "127.0.0.1") -> None:
        self.requests: list[Recorded] = []
        self.answered: list[Recorded] = []  # requests whose answer was sent in full, in order
        self._steps: list[Step] = [Step()]
        self._lock = threading.Lock()
        self._changed = threading.Condition()  # notified on every arrival and every answer
        self.release = threading.Event()  # set at teardown so sleeping handlers finish at once
        self._holds: list[threading.Event] = []  # every hold met, opened at teardown
        self._httpd = _QuietServer(("127.0.0.1", 0), _make_handler(self))
        if tls is not None:
            self._httpd.socket = tls.wrap_socket(self._httpd.socket, server_side=True)
        self.port = self._httpd.server_address[1]
        self.url = f"{'https' if tls else 'http'}://{host_name}:{self.port}"
        # A short poll interval keeps shutdown (and so each test's teardown) fast.
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self._thread.start()

    def script(self, *steps: Step) -> None:
        """Answer the next requests with ``steps`` in order; the last one repeats."""
        with self._lock:
            self._steps = list(steps) or [Step()]

    def _next_step(self) -> Step:
        with self._lock:
            return self._steps.pop(0) if len(self._steps) > 1 else self._steps[0]

    def _record(self, into: list[Recorded], request: Recorded) -> None:
        with self._changed:
            into.append(request)
            self._changed.notify_all()

    def wait_for_requests(self, count: int = 1, timeout_s: float = 30.0) -> list[Recorded]:
        """Block until ``count`` requests have arrived; fail the test after ``timeout_s``."""
        return self._wait(self.requests, count, timeout_s, "arrived")

    def wait_for_answers(self, count: int = 1, timeout_s: float = 30.0) -> list[Recorded]:
        """Block until ``count`` answers have been sent in full; fail after ``timeout_s``."""
        return self._wait(self.answered, count, timeout_s, "been answered")

    def _wait(
        self, seen: list[Recorded], count: int, timeout_s: float, what: str
    ) -> list[Recorded]:
        with self._changed:
            if not self._changed.wait_for(lambda: len(seen) >= count, timeout_s):
                raise AssertionError(f"{len(seen)} of {count} request(s) have {what} "
                                     f"after {timeout_s} s")
            return list(seen)

    def close(self) -> None:
        """Stop serving and wake any handler still waiting."""
        self.release.set()
        with self._lock:
            for hold in self._holds:
                hold.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a dropped or timed-out connection is what the tests ask for


def _make_handler(server: FaultServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (stdlib name)
            pass  # keep test output clean

        def _read_body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                chunks = []
                while (size := int(self.rfile.readline().split(b";")[0], 16)) > 0:
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
                self.rfile.readline()
                return b"".join(chunks)
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _handle(self) -> None:
            body = self._read_body()
            headers = {k.lower(): v for k, v in self.headers.items()}
            request = Recorded(self.command, self.path, headers, body, time.monotonic())
            server._record(server.requests, request)
            step = server._next_step()
            if step.delay_s:
                server.release.wait(step.delay_s)
            if step.hold is not None:
                with server._lock:
                    server._holds.append(step.hold)
                    released = server.release.is_set()
                if not released:
                    step.hold.wait()
            if step.drop:
                self.close_connection = True
                self.connection.close()
                return
            answer_headers = dict(step.headers)
            has_etag = any(k.lower() == "etag" for k in answer_headers)
            if self.command == "PUT" and 200 <= step.status < 300 and not has_etag:
                answer_headers["ETag"] = f'"{hashlib.md5(body).hexdigest()}"'
            try:
                self.send_response(step.status)
                for name, value in answer_headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(step.body)))
                self.end_headers()
                if step.trickle_s:
                    self._trickle(step)
                else:
                    self.wfile.write(step.body)
                self.wfile.flush()
            except OSError:
                self.close_connection = True  # the client gave up (timeout): nothing to do
                return
            server._record(server.answered, dataclasses.replace(request, status=step.status))

        def _trickle(self, step: Step) -> None:
            self.close_connection = True
            for index in range(len(step.body)):
                self.wfile.write(step.body[index:index + 1])
                self.wfile.flush()
                if server.release.wait(step.trickle_s):
                    return

        do_PUT = do_POST = do_GET = _handle  # noqa: N815 (http.server's naming)

    return Handler


@pytest.fixture
def fault_server() -> Iterator[FaultServer]:
    """A plain-HTTP scripted server on a free port of 127.0.0.1."""
    server = FaultServer()
    yield server
    server.close()


@pytest.fixture(scope="session")
def test_ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    """A throwaway CA with a server certificate for ``storage.test``."""
    return TestCA.create("storage.test", tmp_path_factory.mktemp("ca"))


@pytest.fixture
def tls_fault_server(test_ca: TestCA) -> Iterator[FaultServer]:
    """The scripted server over TLS, presenting a ``storage.test`` certificate.

    ``url`` uses the name ``storage.test``, which does not resolve: tests pass a resolver that
    maps it to 127.0.0.1 and trust ``test_ca.client_context()``.
    """
    server = FaultServer(tls=test_ca.server_context(), host_name="storage.test")
    yield server
    server.close()

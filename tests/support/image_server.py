"""A real HTTP server on 127.0.0.1 serving images by URL, and the hostile answers fetches meet.

``/img/<name>``: a registered file with its content type; ``/redirect?to=<url>``: a 302 there;
``/endless``: an ``image/png`` body that never ends (counted in ``endless_sent``); ``/slow``:
headers, then nothing.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest


class ImageServer:
    def __init__(self) -> None:
        self.files: dict[str, tuple[str, bytes]] = {}
        self.endless_sent = 0
        self.paths: list[str] = []
        self.release = threading.Event()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def add(self, name: str, data: bytes, content_type: str = "image/png") -> str:
        self.files[name] = (content_type, data)
        return f"{self.url}/img/{name}"

    def close(self) -> None:
        self.release.set()
        self._httpd.shutdown()
        self._httpd.server_close()


def _handler(server: ImageServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            pass

        def do_GET(self) -> None:  # noqa: N802 (stdlib name)
            parts = urlsplit(self.path)
            server.paths.append(parts.path)
            if parts.path.startswith("/img/") and parts.path[5:] in server.files:
                kind, data = server.files[parts.path[5:]]
                self._answer(200, data, {"Content-Type": kind})
            elif parts.path == "/redirect":
                self._answer(302, b"", {"Location": parse_qs(parts.query)["to"][0]})
            elif parts.path == "/endless":
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Connection", "close")
                self.end_headers()
                chunk = b"\0" * 65536
                try:
                    while not server.release.is_set():
                        self.wfile.write(chunk)
                        server.endless_sent += len(chunk)
                except OSError:
                    pass  # the client hung up: what a cap should do
            elif parts.path == "/slow":
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", "100")
                self.end_headers()
                server.release.wait(30)
            else:
                self._answer(404, b"no", {"Content-Type": "text/plain"})

        def _answer(self, status: int, body: bytes, headers: dict[str, str]) -> None:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler


@pytest.fixture
def image_server() -> Iterator[ImageServer]:
    server = ImageServer()
    yield server
    server.close()

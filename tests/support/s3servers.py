"""Pytest plugin: real S3-compatible servers on 127.0.0.1 for delivery tests.

- ``s3rver``: the npm package s3rver 3.7.1 (``npm ci`` installs it into ``node_modules``). It checks
  SigV2 presigned URLs fully (key, signed headers, expiry) and SigV4 expiry only.
- ``moto_s3``: moto's S3 in server mode: stores objects and ACLs, checks no signature at all.
- ``fault_server`` / ``tls_fault_server``: a scripted HTTP(S) server (see ``faultserver.py``).

The two S3 servers are session-scoped (starting s3rver costs about a second); tests use distinct
object keys, so sharing is safe.
"""

from __future__ import annotations

import queue
import re
import subprocess
import threading
import time
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from moto.server import ThreadedMotoServer

from tests.support.faultserver import fault_server, test_ca, tls_fault_server
from tests.support.processes import stop_process

__all__ = ["S3Endpoint", "fault_server", "moto_s3", "s3rver", "test_ca", "tls_fault_server"]

REPO_ROOT = Path(__file__).resolve().parents[2]
# The package's own script, not the .bin link: a copied tree (mutation testing) breaks the link.
S3RVER_BIN = REPO_ROOT / "node_modules" / "s3rver" / "bin" / "s3rver.js"
START_TIMEOUT_S = 20.0
_LISTENING = re.compile(r"listening on 127\.0\.0\.1:(\d+)")


@dataclass
class S3Endpoint:
    """A running S3-compatible server with one bucket and signing clients for it."""

    endpoint: str  # http://127.0.0.1:<port>
    bucket: str
    access_key: str
    secret_key: str

    def client(self, signature_version: str = "s3v4") -> Any:
        """A boto3 S3 client, path-style; ``"s3"`` signs SigV2, ``"s3v4"`` SigV4."""
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name="us-east-1",
            config=Config(
                signature_version=signature_version,
                s3={"addressing_style": "path"},
                # Newer botocore adds CRC checksums to requests; presigned PUTs must not need them.
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            ),
        )

    def presign_put(
        self, key: str, *, expires_s: int = 600, v4: bool = False,
        params: Mapping[str, str] | None = None,
    ) -> str:
        """A presigned PUT URL for ``key`` (SigV2 unless ``v4``); ``params`` such as ``ACL`` or
        ``ContentType`` become part of what is signed."""
        client = self.client("s3v4" if v4 else "s3")
        return str(
            client.generate_presigned_url(
                "put_object",
                Params={"Bucket": self.bucket, "Key": key, **(params or {})},
                ExpiresIn=expires_s,
            )
        )

    def presign_post(
        self, key: str, *, conditions: list[Any] | None = None,
        fields: Mapping[str, str] | None = None, expires_s: int = 600, v4: bool = True,
    ) -> dict[str, Any]:
        """``{"url": ..., "fields": {...}}`` for a presigned POST."""
        client = self.client("s3v4" if v4 else "s3")
        return dict(
            client.generate_presigned_post(
                self.bucket, key, Fields=dict(fields or {}), Conditions=conditions or [],
                ExpiresIn=expires_s,
            )
        )

    def get(self, key: str) -> bytes:
        """The stored bytes of ``key`` (read with credentials)."""
        response = self.client().get_object(Bucket=self.bucket, Key=key)
        return bytes(response["Body"].read())

    def object_url(self, key: str) -> str:
        """The unsigned path-style URL of ``key``."""
        return f"{self.endpoint}/{self.bucket}/{key}"


class _OutputDrain(threading.Thread):
    """Reads a child's output so its pipe never fills; keeps the last lines for error messages."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        super().__init__(daemon=True)
        self.process = process
        self.lines: deque[str] = deque(maxlen=50)
        self.port: queue.Queue[int] = queue.Queue()

    def run(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip())
            match = _LISTENING.search(line)
            if match:
                self.port.put(int(match.group(1)))


def _wait_for_port(process: subprocess.Popen[str], drain: _OutputDrain) -> int:
    """The port s3rver reports, or a test failure with its output if it exits or hangs."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            return drain.port.get(timeout=0.1)
        except queue.Empty:
            if process.poll() is not None:
                break
    process.kill()
    process.wait()
    drain.join(timeout=1)
    output = "\n".join(drain.lines)
    pytest.fail(f"s3rver did not start (exit code {process.returncode}):\n{output}", pytrace=False)


@pytest.fixture(scope="session")
def s3rver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Endpoint]:
    """s3rver on a free port of 127.0.0.1, path-style only, with the bucket ``safegen-test``."""
    if not S3RVER_BIN.exists():
        pytest.fail(f"{S3RVER_BIN} is missing: run `npm ci` in {REPO_ROOT} first", pytrace=False)
    bucket = "safegen-test"
    process = subprocess.Popen(
        [
            str(S3RVER_BIN), "--directory", str(tmp_path_factory.mktemp("s3rver")),
            "--address", "127.0.0.1", "--port", "0", "--no-vhost-buckets",
            "--configure-bucket", bucket,
        ],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    drain = _OutputDrain(process)
    drain.start()
    port = _wait_for_port(process, drain)
    try:
        yield S3Endpoint(f"http://127.0.0.1:{port}", bucket, "S3RVER", "S3RVER")
    finally:
        stop_process(process, grace_s=5)


@pytest.fixture(scope="session")
def moto_s3() -> Iterator[S3Endpoint]:
    """moto's S3 server on a free port of 127.0.0.1 with the bucket ``safegen-moto``."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = S3Endpoint(f"http://{host}:{port}", "safegen-moto", "testing", "testing")
    endpoint.client().create_bucket(Bucket=endpoint.bucket)
    try:
        yield endpoint
    finally:
        server.stop()

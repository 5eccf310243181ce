"""The Python client against real ``safegen serve`` processes (and a scripted HTTP server for
answers a real server cannot be made to give on cue)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from tests.support import images
from tests.support.app_client import AUTH, PINNED_PATH, TEST_KEY
from tests.support.faultserver import FaultServer, Step

from safegen.client import (
    AsyncClient,
    AuthenticationError,
    Client,
    IncompleteClassification,
    RetryPolicy,
)

BROKEN = {7: b"", 33: b"not an image at all", 90: images.truncated_jpeg(3), 151: b"GIF89a"}
IMAGE_ERRORS = {"invalid_image", "unsupported_format", "too_large"}  # README: per-image codes


def make_folder(path: Path, count: int) -> list[Path]:
    path.mkdir(parents=True, exist_ok=True)
    files = []
    for i in range(count):
        file = path / f"img-{i:03d}.{'png' if i % 5 == 0 else 'jpg'}"
        if i in BROKEN:
            data = BROKEN[i]
        else:
            data = images.png(i, (48, 40)) if i % 5 == 0 else images.jpeg(i, (64, 48))
        file.write_bytes(data)
        files.append(file)
    return files


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """200 images, a few of them broken, named so that sorted order is creation order."""
    return make_folder(tmp_path_factory.mktemp("pics"), 200)


class Recording(httpx.HTTPTransport):
    """The real transport, noting each request and answer (status, time, Retry-After)."""

    def __init__(self) -> None:
        super().__init__()
        self.log: list[tuple[str, int, float, str | None]] = []
        self._lock = threading.Lock()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        with self._lock:
            self.log.append((request.url.path, response.status_code, time.monotonic(),
                             response.headers.get("retry-after")))
        return response


def test_folder_of_200_goes_in_requests_of_the_servers_limit(generator_server, folder):
    transport = Recording()
    with Client(generator_server.url, TEST_KEY, transport=transport) as client:
        assert client.info().max_files_per_request == 16
        results = client.classify(folder[0].parent)
    classify_calls = [entry for entry in transport.log if entry[0] == "/v1/classify"]
    assert len(classify_calls) == 13  # ceil(200 / 16): never more than the server's limit
    assert all(status == 200 for _, status, _, _ in classify_calls)
    assert [r.source for r in results] == [str(f) for f in folder]  # input order
    assert [r.index for r in results] == list(range(200))
    for i, result in enumerate(results):
        if i in BROKEN:
            assert result.error is not None, result
            assert result.error.code in IMAGE_ERRORS
        else:
            assert result.ok
            assert 0 <= result.nsfw_score <= 1
            assert result.label in {"normal", "nsfw"}
    # Scores belong to the right files: the same files sent by hand, one request of 16.
    sample = folder[16:32]
    direct = httpx.post(f"{generator_server.url}/v1/classify", headers=AUTH, timeout=60,
                        files=[("files", (f.name, f.read_bytes())) for f in sample]).json()
    for got, expected in zip(results[16:32], direct["results"], strict=True):
        if "error" in expected:
            assert got.error is not None
            assert got.error.code == expected["error"]["code"]
        else:
            assert got.nsfw_score == pytest.approx(expected["nsfw_score"], abs=1e-4)


def test_async_client_matches_and_reports_progress(generator_server, folder):
    seen: list[tuple[int, int]] = []

    async def run():
        async with AsyncClient(generator_server.url, TEST_KEY, max_concurrency=3) as client:
            inputs = [*folder[:40], folder[41].read_bytes()]
            return await client.classify(inputs, on_progress=lambda d, t: seen.append((d, t)))

    results = asyncio.run(run())
    assert len(results) == 41
    assert results[40].source == "bytes #40"
    assert results[40].ok
    assert results[7].error is not None
    assert results[33].error is not None
    assert seen[-1] == (41, 41)
    assert [done for done, _ in seen] == sorted(done for done, _ in seen)
    with Client(generator_server.url, TEST_KEY) as client:
        again = client.classify(folder[41])
    assert again[0].nsfw_score == pytest.approx(results[40].nsfw_score, abs=1e-4)


def test_wrong_key_is_a_typed_error_and_not_retried(generator_server, folder):
    transport = Recording()
    key = "wrong-key-0123456789abcdef"
    with (Client(generator_server.url, key, transport=transport) as client,
          pytest.raises(AuthenticationError) as caught):
        client.classify(folder[:3])
    assert caught.value.status == 401
    assert caught.value.code
    assert caught.value.request_id
    assert len(transport.log) == 1


def test_429_waits_for_retry_after_then_succeeds(server_process, tiny_vit_dir, folder):
    server = server_process({"SAFEGEN_NSFW_MODEL": str(tiny_vit_dir),
                             "SAFEGEN_RATE_LIMIT": "8/2 seconds"})
    transport = Recording()
    retry = RetryPolicy(attempts=6, max_retry_after_s=10)
    with Client(server.url, TEST_KEY, transport=transport, files_per_request=4,
                max_concurrency=1, retry=retry) as client:
        results = client.classify([f for i, f in enumerate(folder[:24]) if i not in BROKEN])
    assert all(r.ok for r in results)
    calls = [e for e in transport.log if e[0] == "/v1/classify"]
    refused = [i for i, (_, status, _, _) in enumerate(calls) if status == 429]
    assert refused, "the budget of 8 images per 2 s must run out on 23 images"
    for i in refused:
        wait = float(calls[i][3])
        assert calls[i + 1][2] - calls[i][2] >= wait - 0.01  # the server's Retry-After honoured


def _json(body: object) -> bytes:
    return json.dumps(body).encode()


INFO = _json({"version": "0", "model": "m", "generator": False, "nsfw_threshold": 0.5,
              "limits": {"max_files_per_request": 8, "max_image_bytes": 10**6,
                         "max_request_bytes": 10**7}})
ONE_RESULT = _json({"model": "m", "results": [
    {"index": 0, "filename": "a", "label": "normal", "nsfw_score": 0.25,
     "scores": {"normal": 0.75, "nsfw": 0.25}}]})
JSON = {"Content-Type": "application/json"}


@pytest.fixture
def scripted():
    server = FaultServer()
    yield server
    server.close()


def test_503_retry_after_is_honoured_and_capped(scripted):
    busy = _json({"error": {"code": "overloaded", "message": "queue full", "request_id": "r1"}})
    scripted.script(Step(200, JSON, INFO), Step(503, {**JSON, "Retry-After": "1"}, busy),
                    Step(503, {**JSON, "Retry-After": "3600"}, busy), Step(200, JSON, ONE_RESULT))
    with Client(scripted.url, "k", retry=RetryPolicy(attempts=3, max_retry_after_s=1.5)) as client:
        [result] = client.classify(images.png(1))
    assert result.nsfw_score == 0.25
    first, second, third = (r.at for r in scripted.requests[1:])
    assert second - first >= 1.0  # Retry-After: 1
    assert 1.5 <= third - second < 60  # Retry-After: 3600, cut to the policy's cap


def test_503_until_attempts_run_out_keeps_the_server_error(scripted):
    busy = _json({"error": {"code": "overloaded", "message": "queue full", "request_id": "r9"}})
    scripted.script(Step(200, JSON, INFO), Step(503, JSON, busy))
    with (Client(scripted.url, "k", retry=RetryPolicy(attempts=3, backoff_s=0.01)) as client,
          pytest.raises(IncompleteClassification) as caught):
        client.classify([images.png(1), images.png(2)])
    assert len(scripted.requests) == 1 + 3
    cause = caught.value.cause
    assert (cause.status, cause.code, cause.message, cause.request_id) == (
        503, "overloaded", "queue full", "r9")
    assert [r.error.code for r in caught.value.results] == ["not_classified"] * 2


def test_a_4xx_is_not_retried_and_stays_with_its_images(scripted):
    bad = _json({"error": {"code": "too_large", "message": "request too large", "field": "files"}})
    scripted.script(Step(200, JSON, INFO), Step(413, JSON, bad))
    with Client(scripted.url, "k") as client:
        results = client.classify([images.png(1), images.png(2)])
    assert len(scripted.requests) == 2
    assert [(r.error.code, r.error.message) for r in results] == [
        ("too_large", "request too large")] * 2


def test_generate_is_not_resent_after_a_read_timeout(scripted):
    scripted.script(Step(200, JSON, ONE_RESULT, delay_s=2))
    with (Client(scripted.url, "k", timeout=httpx.Timeout(5, read=0.3)) as client,
          pytest.raises(Exception, match="ReadTimeout")):
        client.generate("a cat")
    assert len(scripted.requests) == 1  # may have started: never sent twice


def test_server_going_away_keeps_what_finished(server_process, tiny_vit_dir, folder):
    server = server_process({"SAFEGEN_NSFW_MODEL": str(tiny_vit_dir),
                             "SAFEGEN_MAX_FILES_PER_REQUEST": "4", "SAFEGEN_RATE_LIMIT": ""})

    def stop_server_after_three_requests(done: int, total: int) -> None:
        if done == 12:
            server.process.kill()
            server.process.wait(10)

    retry = RetryPolicy(attempts=2, backoff_s=0.05)
    with (Client(server.url, TEST_KEY, max_concurrency=1, retry=retry) as client,
          pytest.raises(IncompleteClassification) as caught):
        client.classify(folder, on_progress=stop_server_after_three_requests)
    error = caught.value
    assert "stopped after 12 of 200 images" in error.message
    assert server.url in error.cause.message
    assert len(error.results) == 200
    assert all(r.ok or r.index in BROKEN for r in error.results[:12])
    assert {r.error.code for r in error.results[12:]} == {"not_classified"}


def test_generate_b64_through_the_client(generator_server):
    with Client(generator_server.url, TEST_KEY) as client:
        result = client.generate("a cat", width=64, height=128, num_inference_steps=2,
                                 upscale=False, response_format="b64_json", seed=3)
    jpeg = result.image_bytes()
    assert jpeg is not None
    assert jpeg.startswith(b"\xff\xd8")
    assert result.image_hash == hashlib.md5(jpeg).hexdigest()
    assert 0 <= result.nsfw_score <= 1
    assert result.s3_upload_status is None
    assert {"generate"} <= set(result.timings_ms)


def test_cli_server_mode_gives_the_local_rows(generator_server, tiny_vit_dir, folder, tmp_path):
    small = make_folder(tmp_path / "few", 40)
    command = [sys.executable, "-m", "safegen", "classify", str(small[0].parent), "--format",
               "json"]
    env = {**os.environ, "SAFEGEN_API_KEY": TEST_KEY, **PINNED_PATH}  # the server's path
    remote = subprocess.run([*command, "--server", generator_server.url], env=env,
                            capture_output=True, text=True, timeout=120)
    local = subprocess.run([*command, "--model", str(tiny_vit_dir), "-q"], env=env,
                           capture_output=True, text=True, timeout=120)
    assert remote.returncode == local.returncode == 1  # broken files in the folder
    assert "40/40" in remote.stderr  # the progress bar
    got, expected = json.loads(remote.stdout), json.loads(local.stdout)
    assert [r["path"] for r in got] == [r["path"] for r in expected]
    for g, e in zip(got, expected, strict=True):
        assert ("error" in g) == ("error" in e)
        if "error" not in e:
            assert g["label"] == e["label"]
            assert g["nsfw_score"] == pytest.approx(e["nsfw_score"], abs=1e-4)

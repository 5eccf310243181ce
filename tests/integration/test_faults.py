"""Back-pressure and faults, in-process: the service answers at once or recovers, never hangs.

Real tiny models and a real scripted storage server; the only thing faked is the fault itself (a
model that is slow, raises or stalls), by wrapping the live backend or pipeline object. Storage
retries are covered in test_generate_api.py and test_uploader.py; this file adds the slow-storage
path through the settings, the metrics of attempts, an unsendable header, a client that goes away
mid-request, and oversized uploads over real TCP. docs/reliability.md has the fault table.

Nothing here waits on the clock to decide an outcome: a slow model or storage is one that holds
its answer until the test lets it go, so "refused at once" reads "answered while the model had
finished nothing", and "not a hang" reads "answered while the model was still stuck".
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import numpy as np
import pytest

from safegen.app import create_app
from safegen.errors import Overloaded
from tests.support import images
from tests.support.app_client import AUTH as AUTH_HEADERS
from tests.support.app_client import running_app, settings_for
from tests.support.faultserver import Step

SMALL = {"width": 64, "height": 64, "num_inference_steps": 1, "upscale": False}
JPEG = images.jpeg(0, (64, 64))


def metric(text: str, name: str) -> float:
    """The value of one sample line of the Prometheus text ``text``; a missing series fails."""
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    assert match, f"no {name} series in /metrics"
    return float(match.group(1))


def app_for(tiny_vit_dir, tiny_sd_dir=None, **overrides: Any) -> Any:
    values: dict[str, Any] = {
        "rate_limit": "", "upload_allowed_schemes": ["http", "https"],
        "upload_allow_loopback": True, "upload_backoff_s": [0.05, 0.05, 0.05], "upscaler": "none",
    }
    if tiny_sd_dir is not None:
        values["generator_model"] = str(tiny_sd_dir)
    values.update(overrides)
    return create_app(settings_for(tiny_vit_dir, **values))


GATE_TIMEOUT_S = 60  # a held model call gives up after this: a failing test must not hang
EVENT_TIMEOUT_S = 30  # for events that come within a second or two when all is well


class Fault:
    """Wraps a live callable: holds it, delays it, makes it raise, or lets it through."""

    def __init__(self, real: Callable[..., Any]) -> None:
        self.real = real
        self.mode = "pass"
        self.delay_s = 0.0
        self.active = 0  # calls in progress (a stalled call outlives the request that timed out)
        self.calls = 0  # calls made (a model's forward passes: batches)
        self._gate = threading.Event()
        self._gate.set()

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """Calls made inside the block wait (on the model's thread) until it ends."""
        self._gate.clear()
        try:
            yield
        finally:
            self._gate.set()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.active += 1
        self.calls += 1
        try:
            assert self._gate.wait(GATE_TIMEOUT_S), "the test never let the model go"
            if self.delay_s:
                time.sleep(self.delay_s)  # on the model's worker thread, as a slow model would be
            if self.mode == "raise":
                raise RuntimeError("injected fault with internal details /srv/secret")
            return self.real(*args, **kwargs)
        finally:
            self.active -= 1

    async def settled(self, timeout_s: float = 10) -> None:
        """Wait until no call is in progress."""
        deadline = time.monotonic() + timeout_s
        while self.active and time.monotonic() < deadline:
            await asyncio.sleep(0.02)


def slow_backend(app: Any, monkeypatch: pytest.MonkeyPatch) -> Fault:
    backend = app.state.classifier.backend
    fault = Fault(backend.predict)
    monkeypatch.setattr(backend, "predict", fault)
    return fault


class FaultyPipeline:
    """Stands in front of the real diffusers pipeline; attributes go through to it."""

    def __init__(self, real: Any) -> None:
        self.__dict__["fault"] = Fault(real)
        self.__dict__["real"] = real

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fault(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


def faulty_generator(app: Any) -> Fault:
    generator = app.state.generate_service.generator
    wrapper = FaultyPipeline(generator.pipeline)
    generator.pipeline = wrapper
    return wrapper.fault


async def timed(coro: Any) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = await coro
    return response, time.monotonic() - started


class Admissions:
    """Counts the classifier's admission decisions; ``decided`` is set after ``total`` of them."""

    def __init__(self, engine: Any, monkeypatch: pytest.MonkeyPatch, total: int) -> None:
        self.admitted = self.refused = 0
        self.total = total
        self.decided = asyncio.Event()
        self._real = engine._admit
        monkeypatch.setattr(engine, "_admit", self._admit)

    def _admit(self, *args: Any) -> None:
        try:
            self._real(*args)
        except Overloaded:
            self.refused += 1
            raise
        else:
            self.admitted += 1
        finally:
            if self.admitted + self.refused >= self.total:
                self.decided.set()


async def first_finished(tasks: list[asyncio.Task[Any]], count: int) -> list[Any]:
    """The results of the first ``count`` tasks to finish (all of those that finish together)."""
    finished: set[asyncio.Task[Any]] = set()
    pending = set(tasks)
    while len(finished) < count:
        done, pending = await asyncio.wait(
            pending, timeout=EVENT_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED
        )
        assert done, f"{len(finished)} of {count} requests answered; the rest are waiting"
        finished |= done
    return [task.result() for task in tasks if task in finished]


# --- back-pressure ------------------------------------------------------------------------------


async def test_classify_flood_is_refused_at_once_and_the_queue_drains(tiny_vit_dir, monkeypatch):
    app = app_for(tiny_vit_dir, max_queue_images=4, max_batch_size=2)
    async with running_app(app) as client:
        fault = slow_backend(app, monkeypatch)
        admissions = Admissions(app.state.classifier, monkeypatch, total=24)
        files = [("files", ("a.jpg", JPEG))]
        with fault.held():  # the model finishes nothing until every refusal is in
            flood = [asyncio.create_task(client.post("/v1/classify", files=files))
                     for _ in range(24)]
            await asyncio.wait_for(admissions.decided.wait(), EVENT_TIMEOUT_S)
            refused = await first_finished(flood, admissions.refused)
            batches_started = fault.calls
        results = await asyncio.gather(*flood)
        metrics = (await client.get("/metrics")).text
    ok = [r for r in results if r.status_code == 200]
    assert len(ok) + len(refused) == 24
    assert 1 <= len(ok) <= 8, len(ok)  # the queue (4) plus what was already in the model
    assert len(refused) >= 16
    assert batches_started <= 1  # the refusals waited for no model work
    for response in refused:  # refused before any work, not after waiting in line
        assert response.status_code == 503, response.text
        assert response.headers["Retry-After"].isdigit()
        assert response.json()["error"]["code"] == "overloaded"
    # Admitted work is bounded by the queue: a few batches (4 images queued / 2 per batch, plus
    # the one already in the model), not one per flooding client.
    assert fault.calls <= 4 / 2 + 2, fault.calls
    assert metric(metrics, "safegen_queue_depth") == 0
    assert metric(metrics, 'safegen_rejected_requests_total{reason="overloaded"}') == len(refused)


async def test_classify_is_refused_when_the_expected_wait_is_too_long(tiny_vit_dir, monkeypatch):
    """Admission by expected wait (queued images x recent model time per image), not only by
    count: far below SAFEGEN_MAX_QUEUE_IMAGES, requests that would wait > 1 s are refused."""
    app = app_for(tiny_vit_dir, max_queue_wait_s=1.0, max_batch_size=2)
    files = [("files", ("a.jpg", JPEG))]
    async with running_app(app) as client:
        fault = slow_backend(app, monkeypatch)
        fault.delay_s = 0.4  # the model's time per batch: what admission learns from
        for _ in range(4):  # an idle server admits anything; these teach it about 0.24 s/image
            assert (await client.post("/v1/classify", files=files)).status_code == 200
        admissions = Admissions(app.state.classifier, monkeypatch, total=16)
        taught = fault.calls
        with fault.held():  # the model finishes nothing until every refusal is in
            burst = [asyncio.create_task(client.post("/v1/classify", files=files))
                     for _ in range(16)]
            await asyncio.wait_for(admissions.decided.wait(), EVENT_TIMEOUT_S)
            refused = await first_finished(burst, admissions.refused)
            batches_started = fault.calls - taught
        results = await asyncio.gather(*burst)
    ok = [r for r in results if r.status_code == 200]
    assert len(ok) + len(refused) == 16
    assert 2 <= len(ok) <= 8, len(ok)  # about 1 s / 0.24 s of images ahead, plus the first
    assert batches_started <= 1  # the refusals waited for no model work
    for response in refused:  # refused before any work
        assert response.status_code == 503, response.text
        assert "SAFEGEN_MAX_QUEUE_WAIT_S" in response.json()["error"]["message"]
        assert int(response.headers["Retry-After"]) >= 1
    # Admitted work is bounded by the limit: the batches that served it carry no more images
    # than were admitted (nothing ran for the refused ones).
    assert fault.calls - taught <= len(ok)


async def test_generate_flood_is_refused_at_once_beyond_max_pending(
    tiny_vit_dir, tiny_sd_dir
):
    app = app_for(tiny_vit_dir, tiny_sd_dir, generator_max_pending=2)
    async with running_app(app) as client:
        fault = faulty_generator(app)
        body = {"prompt": "x", "response_format": "b64_json", **SMALL}
        with fault.held():  # no image is finished until every refusal is in
            flood = [asyncio.create_task(client.post("/generate", json=body)) for _ in range(8)]
            refused = await first_finished(flood, 6)
            in_flight = app.state.generate_service.in_flight
        results = await asyncio.gather(*flood)
        generations = fault.calls
        after = await client.post("/generate", json=body)
    statuses = sorted(r.status_code for r in results)
    assert statuses == [200, 200] + [503] * 6
    assert in_flight == 2
    for response in refused:  # answered while no image had been generated: before any work
        assert response.status_code == 503, response.text
        assert int(response.headers["Retry-After"]) >= 1
    assert generations == 2  # the two admitted, one ahead of the other at most; none refused
    assert after.status_code == 200  # the pending count went back down


async def test_generation_refusals_ask_to_wait_as_long_as_the_last_job_took(
    tiny_vit_dir, tiny_sd_dir
):
    """Retry-After on a full generator is the last job's duration (README: the expected wait),
    not a constant: a job held for 3.2 s makes the next refusal ask for 3 s or a little more."""
    app = app_for(tiny_vit_dir, tiny_sd_dir, generator_max_pending=1)
    body = {"prompt": "x", "response_format": "b64_json", **SMALL}
    async with running_app(app) as client:
        fault = faulty_generator(app)
        fault.delay_s = 3.2
        first, first_s = await timed(client.post("/generate", json=body))
        fault.delay_s = 0.0
        with fault.held():
            in_flight = asyncio.create_task(client.post("/generate", json=body))
            deadline = time.monotonic() + EVENT_TIMEOUT_S
            while fault.calls < 2:  # the second job holds the only generation slot
                assert time.monotonic() < deadline, "the second job never reached the pipeline"
                await asyncio.sleep(0.01)
            refused = await client.post("/generate", json=body)
        assert (await in_flight).status_code == 200
    assert first.status_code == 200, first.text
    assert refused.status_code == 503, refused.text
    # The job took at least the 3.2 s held, at most what its client waited.
    assert 3 <= int(refused.headers["Retry-After"]) <= max(3, round(first_s) + 1)


# --- model faults -------------------------------------------------------------------------------


async def test_classifier_raising_gives_per_image_errors_then_recovers(
    tiny_vit_dir, monkeypatch, caplog
):
    app = app_for(tiny_vit_dir)
    async with running_app(app) as client:
        fault = slow_backend(app, monkeypatch)
        fault.mode = "raise"
        files = [("files", ("a.jpg", JPEG)), ("files", ("b.png", images.png(1)))]
        failed = await client.post("/v1/classify", files=files)
        fault.mode = "pass"
        healthy = await client.post("/v1/classify", files=files)
        ready = await client.get("/readyz")
    assert failed.status_code == 200
    codes = [entry["error"]["code"] for entry in failed.json()["results"]]
    assert codes == ["inference_failed", "inference_failed"]
    assert "secret" not in failed.text
    assert "injected" not in failed.text
    assert healthy.status_code == 200
    assert all("nsfw_score" in entry for entry in healthy.json()["results"])
    assert ready.status_code == 200
    # Logged for the operator, with the traceback; on a busy host the two images may have been
    # decoded far enough apart to make two batches of one.
    failed_batches = [(int(m[1]), r.exc_info is not None) for r in caplog.records
                      if (m := re.fullmatch(r"batch of (\d+) failed", r.getMessage()))]
    assert sum(size for size, _ in failed_batches) == 2
    assert all(traceback for _, traceback in failed_batches)


async def test_classifier_stalling_past_the_timeout_is_an_error_not_a_hang(
    tiny_vit_dir, monkeypatch
):
    app = app_for(tiny_vit_dir, inference_timeout_s=0.5)
    async with running_app(app) as client:
        fault = slow_backend(app, monkeypatch)
        with fault.held():  # stuck until the answer is in: an answer at all is not a hang
            stalled, seconds = await timed(client.post("/v1/classify",
                                                       files=[("files", ("a.jpg", JPEG))]))
            still_stuck = fault.active
        await fault.settled()  # the stalled forward pass ends once let go
        healthy = await client.post("/v1/classify", files=[("files", ("a.jpg", JPEG))])
    assert stalled.status_code == 200
    (entry,) = stalled.json()["results"]
    assert entry["error"]["code"] == "inference_failed"
    assert "SAFEGEN_INFERENCE_TIMEOUT_S" in entry["error"]["message"]
    assert still_stuck == 1  # answered while the model call was still running
    assert seconds >= 0.5  # after the timeout, not before: a slower host only waits longer
    assert healthy.status_code == 200
    assert "nsfw_score" in healthy.json()["results"][0]


async def test_generator_raising_is_a_fixed_500_and_the_next_request_works(
    tiny_vit_dir, tiny_sd_dir
):
    app = app_for(tiny_vit_dir, tiny_sd_dir)
    async with running_app(app) as client:
        fault = faulty_generator(app)
        fault.mode = "raise"
        body = {"prompt": "x", "response_format": "b64_json", **SMALL}
        failed = await client.post("/generate", json=body)
        ready = await client.get("/readyz")
        fault.mode = "pass"
        healthy = await client.post("/generate", json=body)
        metrics = (await client.get("/metrics")).text
    assert failed.status_code == 500
    error = failed.json()["error"]
    assert (error["code"], error["message"]) == ("generation_failed", "image generation failed")
    assert "injected" not in failed.text
    assert "secret" not in failed.text
    assert error["request_id"] == failed.headers["x-request-id"]
    assert ready.status_code == 200
    assert healthy.status_code == 200
    assert base64.b64decode(healthy.json()["data"]["b64_json"])[:2] == b"\xff\xd8"
    assert metric(metrics, 'safegen_generations_total{outcome="failed"}') == 1
    assert metric(metrics, 'safegen_generations_total{outcome="generated"}') == 1


# --- storage faults -----------------------------------------------------------------------------


async def test_storage_slower_than_the_upload_timeout_is_retried(
    tiny_vit_dir, tiny_sd_dir, fault_server
):
    fault_server.script(Step(200, hold=threading.Event()), Step(200))  # the first never answers
    app = app_for(tiny_vit_dir, tiny_sd_dir, upload_timeout_s=0.3)
    async with running_app(app) as client:
        response = await asyncio.wait_for(client.post("/generate", json={
            "prompt": "x", "s3_prefix": f"{fault_server.url}/b/1.png?Signature=abc", **SMALL,
        }), EVENT_TIMEOUT_S)  # the held attempt must not hold the request
        metrics = (await client.get("/metrics")).text
    assert response.status_code == 200, response.text
    assert response.json()["data"]["s3_upload_status"] == 200
    assert len([r for r in fault_server.requests if r.method == "PUT"]) == 2
    # The first attempt was abandoned at the read timeout: its answer was never sent.
    assert [r.status for r in fault_server.answered] == [200]
    assert fault_server.answered[0].at == fault_server.requests[1].at
    assert metric(metrics, 'safegen_upload_attempts_total{status_class="error"}') == 1
    assert metric(metrics, 'safegen_upload_attempts_total{status_class="2xx"}') == 1
    assert metric(metrics, "safegen_upload_retries_total") == 1


async def test_storage_that_never_answers_in_time_is_a_502_naming_the_timeout(
    tiny_vit_dir, tiny_sd_dir, fault_server
):
    fault_server.script(Step(200, hold=threading.Event()))  # no answer until teardown
    app = app_for(tiny_vit_dir, tiny_sd_dir, upload_timeout_s=0.2)
    async with running_app(app) as client:
        response = await asyncio.wait_for(client.post("/generate", json={
            "prompt": "x", "s3_prefix": f"{fault_server.url}/b/1.png?Signature=abc", **SMALL,
        }), EVENT_TIMEOUT_S)  # the held attempt must not hold the request
        metrics = (await client.get("/metrics")).text
    assert response.status_code == 502
    body = response.json()
    assert body["data"]["s3_upload_status"] == 0
    assert "read timeout" in body["error"]["message"]
    assert "abc" not in body["error"]["message"]
    assert metric(metrics, 'safegen_uploads_total{result="failure"}') == 1
    assert metric(metrics, 'safegen_upload_attempts_total{status_class="error"}') == 4


# --- nothing lost -------------------------------------------------------------------------------


async def test_client_gone_mid_request_still_uploads_counts_and_logs(
    tiny_vit_dir, tiny_sd_dir, fault_server, caplog
):
    caplog.set_level(logging.INFO, logger="safegen.generate")
    upload = threading.Event()
    fault_server.script(Step(200, hold=upload))
    app = app_for(tiny_vit_dir, tiny_sd_dir)
    async with running_app(app) as client:
        request = asyncio.create_task(client.post("/generate", json={
            "prompt": "x", "s3_prefix": f"{fault_server.url}/b/1.png?Signature=abc", **SMALL,
        }))
        await asyncio.to_thread(fault_server.wait_for_requests, 1, EVENT_TIMEOUT_S)  # uploading
        request.cancel()  # cancels the handler, as a disconnect can
        with pytest.raises(asyncio.CancelledError):
            await request
        service = app.state.generate_service
        assert service.in_flight == 1
        upload.set()
        await service.drain(GATE_TIMEOUT_S)  # the job, not the request, runs to the end
        assert service.in_flight == 0
        metrics = (await client.get("/metrics")).text
    puts = [r for r in fault_server.requests if r.method == "PUT"]
    assert len(puts) == 1
    assert puts[0].body[:2] == b"\xff\xd8"
    assert metric(metrics, 'safegen_uploads_total{result="success"}') == 1
    assert "upload succeeded" in caplog.text
    assert "Signature=REDACTED" in caplog.text
    assert "Signature=abc" not in caplog.text


async def test_classify_output_matches_a_direct_prediction_after_faults(
    tiny_vit_dir, monkeypatch
):
    """After a raising batch and a stalled one, scores are still the model's, not stale ones."""
    app = app_for(tiny_vit_dir, inference_timeout_s=1.0)
    async with running_app(app) as client:
        engine = app.state.classifier
        fault = slow_backend(app, monkeypatch)
        fault.mode = "raise"
        await client.post("/v1/classify", files=[("files", ("a.jpg", JPEG))])
        fault.mode = "pass"
        with fault.held():  # stalled past the timeout, then let go
            stalled = await client.post("/v1/classify", files=[("files", ("a.jpg", JPEG))])
        assert stalled.json()["results"][0]["error"]["code"] == "inference_failed"
        await fault.settled()
        data = [images.jpeg(seed, (96, 96)) for seed in range(3)]
        response = await client.post("/v1/classify",
                                     files=[("files", (f"{i}.jpg", d)) for i, d in enumerate(data)])
        expected = fault.real(np.stack([engine._decode(d) for d in data]))
    results = response.json()["results"]
    assert all("nsfw_score" in entry for entry in results), results
    scores = [entry["nsfw_score"] for entry in results]
    assert scores == pytest.approx(expected[:, 1].tolist(), abs=1e-5)


# --- hostile clients over real TCP --------------------------------------------------------------


@pytest.mark.slow
async def test_oversized_uploads_read_the_413_instead_of_a_reset(server_process, tiny_vit_dir):
    """Clients still sending a body the server refused must get the 413, not a reset.

    Without draining, about half of these concurrent clients saw ``ReadError`` (the kernel's
    reset for a socket closed with unread data discards the 413 before the client reads it).
    """
    limit = 2_000_000
    server = server_process({"SAFEGEN_NSFW_MODEL": str(tiny_vit_dir),
                             "SAFEGEN_MAX_REQUEST_BYTES": str(limit),
                             "SAFEGEN_MAX_IMAGE_BYTES": "1000000", "SAFEGEN_RATE_LIMIT": ""})

    async def send(client: httpx.AsyncClient, size: int) -> int | str:
        try:
            response = await client.post("/v1/classify", files=[("files", ("b", b"\xff" * size))])
        except httpx.TransportError as exc:
            return type(exc).__name__
        assert "SAFEGEN_MAX_REQUEST_BYTES" in response.json()["error"]["message"]
        return response.status_code

    async with httpx.AsyncClient(base_url=server.url, headers=AUTH_HEADERS, timeout=20) as client:
        outcomes = []
        for size in (limit + 1, 2 * limit - 1000):
            outcomes += await asyncio.gather(*(send(client, size) for _ in range(8)))
        ready = await client.get("/readyz")
    assert outcomes == [413] * 16
    assert ready.status_code == 200


def test_an_unsendable_configured_header_is_refused_at_start(tiny_vit_dir):
    """A header value httpx cannot encode (non-ASCII, from the settings) used to escape as a 500
    after the image was generated; now the settings refuse it before the service starts."""
    from pydantic import ValidationError

    from tests.support.app_client import settings_for

    with pytest.raises(ValidationError, match="printable ASCII"):
        settings_for(tiny_vit_dir, upload_default_headers=["x-amz-meta-owner: café"])


@pytest.mark.parametrize(
    "headers",
    [{"x-amz-acl": "\x80"}, {"x-amz-meta-owner": "café"}, {"x-amz-meta-a b": "x"},
     {"x-amz-meta-é": "x"}],
    ids=["control-byte", "non-ascii-value", "space-in-name", "non-ascii-name"],
)
async def test_unsendable_request_headers_are_a_422_before_generation(
    tiny_vit_dir, tiny_sd_dir, fault_server, headers
):
    """Found by schema fuzzing: these used to generate an image and then fail with a 500."""
    app = app_for(tiny_vit_dir, tiny_sd_dir)
    async with running_app(app) as client:
        response = await client.post("/generate", json={
            "prompt": "x", "s3_prefix": f"{fault_server.url}/b/1.png", "upload_headers": headers,
            **SMALL,
        })
        metrics = (await client.get("/metrics")).text
    assert response.status_code == 422, response.text
    assert response.json()["error"]["field"] == "upload_headers"
    assert metric(metrics, 'safegen_generations_total{outcome="generated"}') == 0
    assert fault_server.requests == []

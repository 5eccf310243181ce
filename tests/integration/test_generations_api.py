"""/v1/generations in-process with the in-process queue: 202 at once, the same data as /generate,
owner-only visibility, cancel, limits and webhook checks at submission."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import time

import httpx
import pytest

from tests.support.app_client import SMALL, TEST_KEY
from tests.support.faultserver import Step
from tests.support.webhooks import TEST_WEBHOOK_SECRET, verified

OTHER_KEY = "another-key-not-a-secret-98765"
WEBHOOK_OK = {
    "webhook_secret": TEST_WEBHOOK_SECRET, "webhook_allowed_schemes": ["http", "https"],
    "webhook_allow_loopback": True, "webhook_backoff_base_s": 0.01,
}
JOB = {"prompt": "a lighthouse at dusk", "response_format": "b64_json", "seed": 3, **SMALL}


async def finished(client: httpx.AsyncClient, job_id: str, timeout_s: float = 60) -> dict:
    """The job once it has a final status (polls its URL, as a client would)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = (await client.get(f"/v1/generations/{job_id}")).json()
        if job["status"] in ("succeeded", "failed", "canceled"):
            return job
        await asyncio.sleep(0.05)
    raise AssertionError(f"job {job_id} still {job['status']} after {timeout_s} s")


async def test_job_answers_202_then_carries_generate_data(make_generate_client):
    async with make_generate_client(api_keys=[TEST_KEY, OTHER_KEY]) as client:
        accepted = await client.post("/v1/generations", json=JOB)
        assert accepted.status_code == 202, accepted.text
        job = accepted.json()
        assert job["status"] == "queued"
        assert set(job) >= {"id", "status", "created_at", "urls"}
        assert job["urls"] == {"get": f"http://safegen/v1/generations/{job['id']}",
                               "cancel": f"http://safegen/v1/generations/{job['id']}/cancel"}
        done = await finished(client, job["id"])
        direct = await client.post("/generate", json=JOB)
        other = {"Authorization": f"Bearer {OTHER_KEY}"}
        hidden = await client.get(f"/v1/generations/{job['id']}", headers=other)
        hidden_cancel = await client.post(f"/v1/generations/{job['id']}/cancel", headers=other)
    assert done["status"] == "succeeded", done
    assert done["created_at"] <= done["started_at"] <= done["completed_at"]
    # Same seed, same pixels: the job's data is what /generate answers for the same body.
    assert done["data"] == direct.json()["data"]
    jpeg = base64.b64decode(done["data"]["b64_json"])
    assert hashlib.md5(jpeg).hexdigest() == done["data"]["image_hash"]
    assert hidden.status_code == 404
    assert hidden.json()["error"]["code"] == "job_not_found"
    assert hidden_cancel.status_code == 404


async def test_webhook_to_loopback_is_refused_by_default(make_generate_client, fault_server):
    async with make_generate_client(webhook_secret=TEST_WEBHOOK_SECRET,
                                    webhook_allowed_schemes=["http", "https"]) as client:
        response = await client.post("/v1/generations",
                                     json={**JOB, "webhook": f"{fault_server.url}/hook"})
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "webhook_target_rejected"
    assert error["field"] == "webhook"
    assert "loopback" in error["message"]
    assert fault_server.requests == []


async def test_webhook_needs_a_configured_secret(make_generate_client):
    async with make_generate_client() as client:
        response = await client.post("/v1/generations",
                                     json={**JOB, "webhook": "https://hooks.example.com/x"})
    assert response.status_code == 422
    assert "SAFEGEN_WEBHOOK_SECRET" in response.json()["error"]["message"]


async def test_start_and_completed_webhooks_are_signed(make_generate_client, fault_server):
    async with make_generate_client(**WEBHOOK_OK) as client:
        job = (await client.post("/v1/generations", json={
            **JOB, "webhook": f"{fault_server.url}/hook",
            "webhook_events_filter": ["start", "completed"],
        })).json()
        done = await finished(client, job["id"])
        deadline = time.monotonic() + 10
        while len(fault_server.requests) < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
    bodies = sorted((verified(r) for r in fault_server.requests), key=lambda b: b["status"])
    assert [b["status"] for b in bodies] == ["running", "succeeded"]
    assert bodies[1] == done
    ids = {r.headers["webhook-id"] for r in fault_server.requests}
    assert len(ids) == 2  # one id per event


async def test_cancel_a_queued_job_and_not_a_finished_one(make_generate_client, fault_server):
    fault_server.script(Step(200, delay_s=30))  # the first job's upload holds the only worker
    async with make_generate_client(**WEBHOOK_OK) as client:
        blocker = (await client.post("/v1/generations", json={
            **JOB, "response_format": "s3", "s3_prefix": f"{fault_server.url}/b/1.png",
        })).json()
        waiting = (await client.post("/v1/generations", json={
            **JOB, "webhook": f"{fault_server.url}/hook"})).json()
        deadline = time.monotonic() + 30
        while not fault_server.requests and time.monotonic() < deadline:
            await asyncio.sleep(0.02)  # the blocker is uploading: the worker is busy
        canceled = await client.post(f"/v1/generations/{waiting['id']}/cancel")
        again = await client.post(f"/v1/generations/{waiting['id']}/cancel")
        running = await client.post(f"/v1/generations/{blocker['id']}/cancel")
        fault_server.script(Step(200))
        fault_server.release.set()
        assert (await finished(client, blocker["id"]))["status"] == "succeeded"
        while not any(r.target == "/hook" for r in fault_server.requests):
            assert time.monotonic() < deadline, "the cancel webhook never came"
            await asyncio.sleep(0.02)
    assert canceled.status_code == 200, canceled.text
    assert canceled.json()["status"] == "canceled"
    assert again.status_code == 409
    assert running.status_code == 409
    assert running.json()["error"]["code"] == "job_not_cancelable"
    hooks = [r for r in fault_server.requests if r.target == "/hook"]
    assert [verified(r)["status"] for r in hooks] == ["canceled"]


async def test_limits_per_key_and_queue_length(make_generate_client, fault_server):
    fault_server.script(Step(200, delay_s=30))
    busy = {**JOB, "response_format": "s3", "s3_prefix": f"{fault_server.url}/b/1.png"}
    async with make_generate_client(jobs_max_in_flight_per_key=2, jobs_max_queued=5,
                                    api_keys=[TEST_KEY, OTHER_KEY]) as client:
        first = await client.post("/v1/generations", json=busy)
        second = await client.post("/v1/generations", json=busy)
        third = await client.post("/v1/generations", json=busy)
        other = {"Authorization": f"Bearer {OTHER_KEY}"}
        others = [await client.post("/v1/generations", json=busy, headers=other)
                  for _ in range(2)]
        fault_server.release.set()
    assert [first.status_code, second.status_code] == [202, 202]
    assert third.status_code == 429
    assert third.headers["retry-after"] == "5"  # README: 429 with `Retry-After: 5`
    assert "SAFEGEN_JOBS_MAX_IN_FLIGHT_PER_KEY" in third.json()["error"]["message"]
    assert [r.status_code for r in others] == [202, 202]


@pytest.mark.parametrize("limit", [1])
async def test_queue_full_answers_503(make_generate_client, fault_server, limit):
    fault_server.script(Step(200, delay_s=30))
    busy = {**JOB, "response_format": "s3", "s3_prefix": f"{fault_server.url}/b/1.png"}
    async with make_generate_client(jobs_max_queued=limit) as client:
        answers = [await client.post("/v1/generations", json=busy) for _ in range(4)]
        fault_server.release.set()
    codes = [a.status_code for a in answers]
    assert codes.count(503) >= 1, codes
    refused = answers[codes.index(503)]
    assert refused.headers["retry-after"] == "5"  # README: 503 with `Retry-After: 5`
    assert "SAFEGEN_JOBS_MAX_QUEUED" in refused.json()["error"]["message"]


async def test_result_over_the_size_limit_fails_the_job(make_generate_client):
    async with make_generate_client(jobs_max_result_bytes=1024) as client:
        job = (await client.post("/v1/generations", json=JOB)).json()
        done = await finished(client, job["id"])
    assert done["status"] == "failed"
    assert done["error"]["code"] == "result_too_large"
    assert "SAFEGEN_JOBS_MAX_RESULT_BYTES" in done["error"]["message"]

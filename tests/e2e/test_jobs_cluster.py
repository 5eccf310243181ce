"""Jobs across real ``safegen serve`` processes sharing one real Redis.

One cluster for the module (each process start costs seconds); each test first makes the number
of live processes it needs (``Cluster.exactly``), so they pass in any order. Two replicas share
the queue; kill -9 of the replica running a job, and the job still succeeds on the other with its
webhook verified by ``standardwebhooks``; kill -9 while a webhook is being sent, and a restarted
process sends it again with the same ``webhook-id``; 500, 500, 200 is three attempts of one id;
cancel; another key cannot see a job. Figures (kill to completion) are printed, not asserted.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from tests.support.app_client import AUTH, TEST_KEY, ServerProcess, start_server
from tests.support.faultserver import FaultServer, Step
from tests.support.redis_server import RedisServer
from tests.support.webhooks import TEST_WEBHOOK_SECRET, verified

pytestmark = pytest.mark.slow

LEASE_S = 2
START_S = 180  # model loading on a busy 2-core machine
OTHER_KEY = "another-key-not-a-secret-98765"
SMALL_JOB = {"prompt": "a red kite over a beach", "width": 64, "height": 64,
             "num_inference_steps": 2, "upscale": "false"}


def wait_until(check: Callable[[], object], timeout_s: float, what: str) -> object:
    """Poll ``check`` until it returns something truthy (the event), or fail naming ``what``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


class Cluster:
    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env = env
        self.logs = logs
        self.servers: list[ServerProcess] = []

    def start(self, count: int = 1) -> list[ServerProcess]:
        """Start ``count`` processes at once (each loads its models: seconds of CPU)."""
        names = [self.logs / f"server-{len(self.servers) + i}.log" for i in range(count)]
        with ThreadPoolExecutor(count) as pool:
            started = list(pool.map(lambda log: start_server(self.env, log, START_S), names))
        self.servers.extend(started)
        return started

    def exactly(self, count: int) -> list[ServerProcess]:
        """Make ``count`` processes live (tests share the cluster in any order): kill the extra
        ones, start the missing ones. Returns them."""
        for extra in self.alive[count:]:
            self.kill(extra)
        if len(self.alive) < count:
            self.start(count - len(self.alive))
        return self.alive

    @property
    def alive(self) -> list[ServerProcess]:
        return [s for s in self.servers if s.process.poll() is None]

    def runner_of(self, job_id: str) -> ServerProcess | None:
        """The live process whose log says it started ``job_id``."""
        return next((s for s in self.alive if f"job {job_id} started by" in s.log()), None)

    def kill(self, server: ServerProcess) -> float:
        server.process.kill()  # SIGKILL: no drain, no goodbye
        server.process.wait(10)
        return time.monotonic()

    def submit(self, server: ServerProcess, **fields: object) -> str:
        response = httpx.post(f"{server.url}/v1/generations", headers=AUTH, timeout=30,
                              json={**SMALL_JOB, **fields})
        assert response.status_code == 202, response.text
        return str(response.json()["id"])

    def job(self, job_id: str, key: str = TEST_KEY) -> httpx.Response:
        server = self.alive[0]
        return httpx.get(f"{server.url}/v1/generations/{job_id}", timeout=10,
                         headers={"Authorization": f"Bearer {key}"})

    def finished(self, job_id: str, timeout_s: float = 60) -> dict:
        def final() -> dict | None:
            job = self.job(job_id).json()
            return job if job["status"] in ("succeeded", "failed", "canceled") else None

        return wait_until(final, timeout_s, f"job {job_id} to finish")  # type: ignore[return-value]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, tiny_vit_dir, tiny_sd_dir) -> Iterator[Cluster]:
    import shutil

    from tests.support.redis_server import free_port

    executable = shutil.which("redis-server")
    assert executable, "redis-server is not installed (apt-get install -y redis-server)"
    redis = RedisServer(executable, free_port(), tmp_path_factory.mktemp("redis"))
    redis.start()
    env = {
        "SAFEGEN_NSFW_MODEL": str(tiny_vit_dir), "SAFEGEN_GENERATOR_MODEL": str(tiny_sd_dir),
        "SAFEGEN_UPSCALER": "none", "SAFEGEN_MAX_BATCH_SIZE": "4", "SAFEGEN_BACKEND": "torch",
        "SAFEGEN_UPLOAD_ALLOWED_SCHEMES": "http,https", "SAFEGEN_UPLOAD_ALLOW_LOOPBACK": "true",
        "SAFEGEN_UPLOAD_BACKOFF_S": "0.05", "SAFEGEN_SHUTDOWN_GRACE_S": "5",
        "SAFEGEN_API_KEYS": f"{TEST_KEY},{OTHER_KEY}",
        "SAFEGEN_JOBS_STORAGE": redis.url, "SAFEGEN_JOBS_LEASE_S": str(LEASE_S),
        "SAFEGEN_WEBHOOK_SECRET": TEST_WEBHOOK_SECRET,
        "SAFEGEN_WEBHOOK_ALLOWED_SCHEMES": "http", "SAFEGEN_WEBHOOK_ALLOW_LOOPBACK": "true",
        "SAFEGEN_WEBHOOK_BACKOFF_BASE_S": "0.05",
    }
    cluster = Cluster(env, tmp_path_factory.mktemp("servers"))
    try:
        cluster.start(2)
        yield cluster
    finally:
        for server in cluster.alive:
            server.process.kill()
            server.process.wait(10)
        redis.stop()


@pytest.fixture
def receiver() -> Iterator[FaultServer]:
    """The webhook receiver: records every request, answers as scripted."""
    server = FaultServer()
    yield server
    server.close()


def test_two_replicas_share_the_queue(cluster):
    first, second = cluster.exactly(2)
    ids = [cluster.submit(first if i % 2 else second, response_format="b64_json", seed=i)
           for i in range(6)]
    for job_id in ids:
        assert cluster.finished(job_id)["status"] == "succeeded"
    ran = [[job_id for job_id in ids if f"job {job_id} started by" in s.log()]
           for s in (first, second)]
    print(f"jobs run per replica: {[len(r) for r in ran]}")
    assert ran[0], ran
    assert ran[1], ran
    assert sorted(ran[0] + ran[1]) == sorted(ids)  # each job ran exactly once


def test_kill_9_of_the_runner_and_the_job_still_succeeds(cluster, fault_server, receiver):
    fault_server.script(Step(200, delay_s=60), Step(200))  # the first upload hangs
    job_id = cluster.submit(cluster.exactly(2)[0], s3_prefix=f"{fault_server.url}/bucket/1.png",
                            webhook=f"{receiver.url}/hook")
    wait_until(lambda: fault_server.requests, 60, "the upload to start")
    runner = wait_until(lambda: cluster.runner_of(job_id), 10, "the runner's log line")
    killed_at = cluster.kill(runner)  # type: ignore[arg-type]
    fault_server.release.set()  # let the dead process's hanging upload go
    hook = wait_until(lambda: receiver.requests, 60, "the webhook")[0]  # type: ignore[index]
    recovered_s = hook.at - killed_at
    print(f"kill -9 to webhook of the finished job on the survivor: {recovered_s:.2f} s "
          f"(lease {LEASE_S} s)")
    job = verified(hook)
    assert job["id"] == job_id
    assert job["status"] == "succeeded", job
    assert job["data"]["s3_upload_status"] == 200
    assert job == cluster.job(job_id).json()
    survivor = cluster.alive[0]
    assert f"job {job_id} resumed by" in survivor.log()
    puts = [r for r in fault_server.requests if r.method == "PUT"]
    assert len(puts) == 2  # the killed attempt, then the survivor's


def test_kill_9_while_sending_the_webhook_and_a_restarted_process_sends_it(cluster, receiver):
    receiver.script(Step(200, delay_s=60), Step(200))  # the first delivery hangs
    (only,) = cluster.exactly(1)  # a second live process would take the job over itself
    job_id = cluster.submit(only, response_format="b64_json", webhook=f"{receiver.url}/hook")
    wait_until(lambda: receiver.requests, 60, "the first webhook attempt")
    cluster.kill(only)
    receiver.release.set()
    (restarted,) = cluster.start()
    wait_until(lambda: len(receiver.requests) >= 2, 60, "the webhook from the restarted process")
    first, second = receiver.requests[:2]
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == f"msg_{job_id}_completed"
    assert verified(first) == verified(second)
    assert verified(second)["status"] == "succeeded"
    assert "took over" in restarted.log()


def test_500_twice_then_200_is_three_attempts_of_one_id(cluster, receiver):
    receiver.script(Step(500), Step(500), Step(200))
    job_id = cluster.submit(cluster.alive[0], response_format="b64_json",
                            webhook=f"{receiver.url}/hook")
    wait_until(lambda: len(receiver.requests) >= 3, 60, "three webhook attempts")
    cluster.finished(job_id)
    assert len(receiver.requests) == 3
    assert {r.headers["webhook-id"] for r in receiver.requests} == {f"msg_{job_id}_completed"}
    assert [verified(r)["status"] for r in receiver.requests] == ["succeeded"] * 3


def test_cancel_and_other_keys(cluster, fault_server):
    fault_server.script(Step(200, delay_s=60), Step(200))
    (server,) = cluster.exactly(1)  # so the waiting job waits: no other process takes it
    busy = cluster.submit(server, s3_prefix=f"{fault_server.url}/bucket/1.png")
    wait_until(lambda: fault_server.requests, 60, "the busy job's upload")
    waiting = cluster.submit(server, response_format="b64_json")
    other = {"Authorization": f"Bearer {OTHER_KEY}"}
    assert cluster.job(waiting, OTHER_KEY).status_code == 404
    refused = httpx.post(f"{server.url}/v1/generations/{waiting}/cancel", headers=other)
    assert refused.status_code == 404
    canceled = httpx.post(f"{server.url}/v1/generations/{waiting}/cancel", headers=AUTH)
    assert canceled.status_code == 200, canceled.text
    assert canceled.json()["status"] == "canceled"
    running = httpx.post(f"{server.url}/v1/generations/{busy}/cancel", headers=AUTH)
    assert running.status_code == 409
    fault_server.release.set()
    assert cluster.finished(busy)["status"] == "succeeded"
    assert cluster.job(waiting).json()["status"] == "canceled"
    assert f"job {waiting} started" not in server.log()
    metrics = httpx.get(f"{server.url}/metrics", headers=AUTH).text
    assert 'safegen_jobs_total{status="succeeded"}' in metrics

"""safegen on Ray Serve: the same app on a private loopback Ray, real S3 (moto) and real Redis.

One Ray instance serves the module (starting it costs 15-20 s): 2 classifier replicas, 1 generator
replica and 2 ingress replicas sharing a Redis rate-limit budget. The last test shuts it down and
checks that no process is left. Ray is imported only after the loopback environment is set.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import io
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from safegen.errors import GenerationFailed, InvalidInput, NotReady, Overloaded
from safegen.settings import Settings
from tests.support.redis_server import RedisServer
from tests.support.redis_server import free_port as free_redis_port

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("ray") is None,
    reason="ray is not installed (pip install 'safegen[ray]')",
)

KEY_A = "ray-test-key-a-not-a-secret-0001"
KEY_B = "ray-test-key-b-not-a-secret-0002"
CLASSIFY_LIMIT = 40  # per key per minute; the batching test stays below it
SMALL = {"width": 64, "height": 128, "num_inference_steps": 2}


def jpeg(color: tuple[int, int, int], size: tuple[int, int] = (320, 240)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, "JPEG")
    return buffer.getvalue()


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module", autouse=True)
def loopback_env() -> Iterator[None]:
    """Ray's variables for a loopback-only instance, set before Ray is imported, then restored."""
    from safegen.ray_serve.local import apply_loopback_env, restore_env

    previous = apply_loopback_env()
    yield
    restore_env(previous)


# -- unwrapping Ray's exceptions (no cluster needed) -----------------------------------------------


def test_a_wrapped_domain_error_comes_back_as_itself():
    from ray.exceptions import RayTaskError

    from safegen.ray_serve.remote import domain_error

    original = InvalidInput("width must be a positive multiple of 8, got 100", field="width")
    wrapped = RayTaskError("generate", "Traceback ...", original)
    for raised in (wrapped, wrapped.as_instanceof_cause()):
        error = domain_error(raised, GenerationFailed("image generation failed"))
        assert error is original
        assert error.field == "width"


def test_ray_failures_become_overloaded_not_ready_or_the_fixed_fallback(caplog):
    from ray.exceptions import ActorDiedError, RayTaskError
    from ray.serve.exceptions import BackPressureError

    from safegen.ray_serve.remote import domain_error

    fallback = GenerationFailed("image generation failed")
    full = BackPressureError(num_queued_requests=9, max_queued_requests=8)
    assert type(domain_error(full, fallback)) is Overloaded
    assert type(domain_error(ActorDiedError(), fallback)) is NotReady
    secret = RuntimeError("prompt: a secret prompt")
    assert domain_error(RayTaskError("generate", "tb", secret), fallback) is fallback
    assert "secret" not in caplog.text


async def test_a_generated_image_goes_to_the_classifier_at_the_models_input_size():
    """The ingress sends the classifier replica ~150 KB, not the generated megapixels."""
    from safegen.moderation.engine import Score
    from safegen.ray_serve.remote import ClassifierInfo, RemoteClassifier

    sent: list[Image.Image] = []

    class Method:  # stands in for a deployment handle's method (``handle.classify_image``)
        def remote(self, image: Image.Image) -> Any:
            sent.append(image)
            return asyncio.sleep(0, Score("normal", 0.25, {"nsfw": 0.25, "normal": 0.75}))

    handle = type("Handle", (), {"classify_image": Method()})()
    classifier = RemoteClassifier(handle, ClassifierInfo("tiny", ["normal", "nsfw"], (224, 224)))
    generated = Image.new("RGB", (1024, 1536), (200, 30, 30))
    score = await classifier.classify_image(generated)
    assert score.nsfw_score == 0.25
    assert [image.size for image in sent] == [(224, 224)]


def test_sizing_from_the_environment_keeps_each_deployments_defaults(monkeypatch):
    from safegen.ray_serve.config import RayServeConfig

    monkeypatch.setenv("SAFEGEN_RAY_CLASSIFIER__NUM_REPLICAS", "3")
    monkeypatch.setenv("SAFEGEN_RAY_GENERATOR__NUM_GPUS", "1")
    config = RayServeConfig(ingress={"autoscaling": {"min_replicas": 2, "max_replicas": 4}})
    classifier = config.classifier.options()
    assert classifier["num_replicas"] == 3
    assert classifier["max_ongoing_requests"] == 64  # not Serve's 5: batches must be able to fill
    assert config.generator.options()["ray_actor_options"]["num_gpus"] == 1
    ingress = config.ingress.options()
    assert "num_replicas" not in ingress
    assert ingress["autoscaling_config"] == {"min_replicas": 2, "max_replicas": 4}


def test_building_without_an_api_key_is_refused(tiny_vit_dir):
    from safegen.ray_serve.deployments import build_application

    # Each ingress replica would generate a different temporary key.
    with pytest.raises(ValueError, match="SAFEGEN_API_KEYS"):
        build_application(Settings(nsfw_model=str(tiny_vit_dir)))


# -- the deployed application ------------------------------------------------------------------


@dataclass
class RayStack:
    url: str
    temp_dir: str
    settings: Settings
    redis: RedisServer
    before_ray: set[int]  # our child processes from before Ray (session fixtures' servers)
    pids: set[int] = field(default_factory=set)
    running: bool = True

    def handle(self, deployment: str) -> Any:
        from ray import serve

        return serve.get_deployment_handle(deployment, app_name="safegen")

    async def replica_stats(self, deployment: str, replicas: int) -> dict[str, dict[str, Any]]:
        """Each replica's ``stats()``: calls are routed at random, so ask until all answered."""
        handle, seen = self.handle(deployment), {}
        for _ in range(60):
            stats = await asyncio.wait_for(handle.stats.remote(), 30)
            seen[stats["replica_id"]] = stats
            if len(seen) == replicas:
                break
        assert len(seen) == replicas, f"only {len(seen)} of {replicas} {deployment} replicas seen"
        return seen

    def ray_processes(self) -> set[int]:
        """Processes started with Ray: new descendants, and any naming our Ray temp dir (daemons
        re-parented to init)."""
        pids = descendants() - self.before_ray
        for entry in Path("/proc").iterdir():
            try:
                if entry.name.isdigit() and self.temp_dir.encode() in (
                    entry / "cmdline"
                ).read_bytes():
                    pids.add(int(entry.name))
            except OSError:
                continue
        return pids

    def shutdown(self) -> None:
        if not self.running:
            return
        self.running = False
        from safegen.ray_serve.local import shutdown

        self.pids |= self.ray_processes()
        shutdown()
        self.redis.stop()


def descendants() -> set[int]:
    """Every process below this one (read from /proc, so no psutil needed)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = set(), [os.getpid()]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


@pytest.fixture(scope="module")
def ray_stack(tiny_vit_dir: Path, tiny_sd_dir: Path) -> Iterator[RayStack]:
    from ray import serve

    from safegen.ray_serve.config import RayServeConfig
    from safegen.ray_serve.deployments import build_application
    from safegen.ray_serve.local import start_local_ray
    from tests.support.app_client import free_port

    redis_dir = Path(os.environ.get("TMPDIR", "/tmp")) / f"sg-redis-{os.getpid()}"
    redis_dir.mkdir(exist_ok=True)
    executable = shutil.which("redis-server") or "redis-server"
    redis = RedisServer(executable, free_redis_port(), redis_dir)
    redis.start()
    settings = Settings(
        nsfw_model=str(tiny_vit_dir), generator_model=str(tiny_sd_dir),
        max_batch_size=8, auto_batch_size=False, max_batch_wait_ms=50, generator_max_pending=1,
        image_side_multiple=1,
        upload_allowed_schemes=["http", "https"], upload_allow_loopback=True,
        upload_backoff_s=[0.05], api_keys=[KEY_A, KEY_B],
        rate_limit_routes={"/v1/classify": f"{CLASSIFY_LIMIT}/minute"},
        rate_limit_storage=redis.url, rate_limit_fail_open=False,
        # A busy test machine slows the model: admission by expected wait must not refuse
        # the 32-request burst below (its refusals are tested in test_faults.py).
        max_queue_wait_s=600,
        # One fixed path, so the in-process engine a test compares with scores identically
        # (`auto` could measure a different path in each process).
        backend="torch", precision="fp32",
    )
    config = RayServeConfig(
        classifier={"num_replicas": 2, "num_cpus": 0.5},
        generator={"num_replicas": 1, "num_cpus": 0.5},
        ingress={"num_replicas": 2, "num_cpus": 0.25},
    )
    before_ray = descendants()
    temp_dir = start_local_ray(num_cpus=4, object_store_bytes=100 * 1024 * 1024)
    port = free_port()
    stack = RayStack(f"http://127.0.0.1:{port}", temp_dir, settings, redis, before_ray)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_application(settings, config), name="safegen", route_prefix="/")
        yield stack
        # After the module's last test, whatever the order: shutting down leaves no process.
        assert_shutdown_leaves_no_process_running(stack)
    finally:
        stack.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)
        shutil.rmtree(redis_dir, ignore_errors=True)


@pytest.fixture
def client(ray_stack: RayStack) -> Callable[[], httpx.AsyncClient]:
    return lambda: httpx.AsyncClient(base_url=ray_stack.url, timeout=60, trust_env=False)


@pytest.mark.slow
async def test_ready_with_both_remote_components(ray_stack, client):
    async with client() as http:
        response = await http.get("/readyz")
    assert response.status_code == 200, response.text
    assert response.json()["components"] == {"classifier": True, "generator": True}


@pytest.mark.slow
async def test_concurrent_requests_fill_batches_on_both_classifier_replicas(
    ray_stack, client, tiny_vit_dir
):
    from safegen.moderation.engine import ClassifierEngine, EngineConfig

    # The replicas serve the other tests too (any order): count what this test adds.
    before = await ray_stack.replica_stats("SafegenClassifier", replicas=2)
    images: list[bytes] = []
    responses: list[httpx.Response] = []
    # Serve's router may send a whole burst to one replica on a busy machine: another burst of
    # new images (no cache hits) until both replicas have formed batches, at most 3.
    for burst in range(3):
        fresh = [jpeg((i * 7 % 256, 90 + burst, 200 - i)) for i in range(32)]
        async with client() as http:
            responses += await asyncio.gather(*(
                http.post("/v1/classify", files={"files": (f"{i}.jpg", data, "image/jpeg")},
                          headers=auth(KEY_A))
                for i, data in enumerate(fresh)
            ))
        images += fresh
        now = await ray_stack.replica_stats("SafegenClassifier", replicas=2)
        if all(now[r]["batches"] > before[r]["batches"] for r in now):
            break
    async with client() as http:
        mixed = await http.post(
            "/v1/classify", headers=auth(KEY_A),
            # Bytes no replica has seen: a copy of images[0] could be a result-cache hit.
            files=[("files", ("ok.jpg", jpeg((1, 2, 3)))), ("files", ("bad.jpg", b"not an image"))],
        )
    assert [r.status_code for r in responses] == [200] * len(images), responses[0].text
    # The remote path scores exactly like the in-process engine (same model, same preprocessing).
    async with ClassifierEngine(EngineConfig.from_settings(ray_stack.settings)) as local:
        expected = await local.classify_bytes(images)
    for response, score in zip(responses, expected, strict=True):
        assert response.json()["results"][0]["nsfw_score"] == pytest.approx(
            score.nsfw_score, abs=1e-5
        )
    # Per-image errors cross the process boundary in their place.
    assert mixed.status_code == 200
    results = mixed.json()["results"]
    assert "nsfw_score" in results[0]
    assert results[1]["error"]["code"] == "invalid_image"

    after = await ray_stack.replica_stats("SafegenClassifier", replicas=2)
    added = {replica: {name: stats[name] - before[replica][name]
                       for name in ("batches", "images", "multi_image_batches")}
             for replica, stats in after.items()}
    assert all(s["batches"] >= 1 for s in added.values()), added  # both replicas served
    # every image once, plus the good one of the mixed request: the bad one is not decoded
    assert sum(s["images"] for s in added.values()) == len(images) + 1, added
    assert sum(s["multi_image_batches"] for s in added.values()) >= 1, added


@pytest.mark.slow
async def test_generate_delivers_to_s3_through_the_deployments(ray_stack, client, moto_s3):
    prefix = moto_s3.presign_put("ray/000/1.png")
    async with client() as http:
        response = await http.post("/generate", headers=auth(KEY_A), json={
            "prompt": "a lighthouse at dusk", "s3_prefix": prefix, "seed": 3, **SMALL,
        })
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert data["s3_upload_status"] == 200
    assert 0 <= data["nsfw_score"] <= 1
    stored = moto_s3.get(f"ray/000/{data['image_hash']}.jpg")
    assert hashlib.md5(stored).hexdigest() == data["image_hash"]
    assert Image.open(io.BytesIO(stored)).size == (128, 256)  # generated remotely, upscaled 2x


@pytest.mark.slow
async def test_replica_domain_errors_arrive_as_the_same_subclasses(ray_stack, client):
    from safegen.generation.base import GenerationRequest
    from safegen.ray_serve.remote import remote_call

    # Over HTTP: the generator replica refuses width 100 (not a multiple of its VAE's 8).
    async with client() as http:
        response = await http.post("/generate", headers=auth(KEY_A), json={
            "prompt": "x", "width": 100, "height": 64, "num_inference_steps": 1,
            "response_format": "b64_json",
        })
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "invalid_input"
    assert response.json()["error"]["field"] == "width"

    # Through the handle: the exact class with its attributes (Overloaded keeps Retry-After).
    generator = ray_stack.handle("SafegenGenerator")
    fallback = GenerationFailed("image generation failed")
    with pytest.raises(InvalidInput) as bad:
        await remote_call(generator.generate.remote(GenerationRequest("x", None, 100, 64, 1)),
                          fallback)
    assert type(bad.value) is InvalidInput
    assert bad.value.field == "width"
    slow = GenerationRequest("x", None, 64, 64, 20, seed=1)
    outcomes = await asyncio.gather(
        *(remote_call(generator.generate.remote(slow), fallback) for _ in range(4)),
        return_exceptions=True,
    )
    refused = [o for o in outcomes if isinstance(o, Exception)]
    assert any(isinstance(o, Image.Image) for o in outcomes), outcomes
    assert refused, "generator_max_pending=1 should refuse concurrent generations"
    assert all(type(o) is Overloaded and o.retry_after_s >= 1 for o in refused), refused


@pytest.mark.slow
async def test_two_ingress_replicas_share_one_redis_budget(ray_stack, client):
    import redis

    before = await ray_stack.replica_stats("SafegenIngress", replicas=2)
    image = jpeg((10, 200, 30), (64, 64))
    sent = CLASSIFY_LIMIT + 8
    codes: list[int] = []
    served: dict[str, int] = {}
    # Serve's router may send a whole burst to one replica on a busy machine: send more bursts
    # (all over the limit by then) until both replicas have answered; each one refused by the
    # second replica shows it reads the same budget.
    for _ in range(5):
        async with client() as http:
            responses = await asyncio.gather(*(
                http.post("/v1/classify", files={"files": ("x.jpg", image)}, headers=auth(KEY_B))
                for _ in range(sent)
            ))
        codes += [r.status_code for r in responses]
        after = await ray_stack.replica_stats("SafegenIngress", replicas=2)
        served = {
            rid: sum(after[rid]["answered"].values()) - sum(before[rid]["answered"].values())
            for rid in after
        }
        if all(count > 0 for count in served.values()):
            break
    assert all(count > 0 for count in served.values()), served  # both replicas took requests
    # One budget: with a budget per replica, up to twice the limit would have passed.
    assert codes.count(200) == CLASSIFY_LIMIT, codes
    # The rest refused: 429 by the budget (503 if Serve itself sheds load on a busy machine).
    assert set(codes) <= {200, 429, 503}, codes
    assert codes.count(429) >= 1, codes
    assert redis.Redis.from_url(ray_stack.redis.url).keys("*"), "the budget should live in Redis"


def assert_shutdown_leaves_no_process_running(stack: RayStack) -> None:
    before = stack.ray_processes()
    assert len(before) >= 7  # gcs, raylet, controller, proxy and 5 replicas at least
    stack.shutdown()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(alive(pid) for pid in stack.pids):
        time.sleep(0.2)
    left = sorted(pid for pid in stack.pids if alive(pid))
    assert not left, f"still running after shutdown: {left}"

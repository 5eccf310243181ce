"""What a queued job costs over ``POST /generate`` when the queue is empty, side by side.

Starts a real Redis and a real ``safegen serve`` process (tiny diffusers pipeline, tiny ViT) with
``SAFEGEN_JOBS_STORAGE`` on that Redis, then alternates: one ``/generate`` request, one job
(``POST /v1/generations``, then a webhook to a local receiver marks it done). The job's time is
submission to webhook arrival, so it includes the queue hand-out, the Redis writes, the signed
webhook and its HTTP exchange. Prints p50/p95 for each and the p50 difference.

    python bench/jobs_overhead.py --requests 20
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.app_client import AUTH, start_server  # noqa: E402
from tests.support.faultserver import FaultServer  # noqa: E402
from tests.support.processes import stop_process  # noqa: E402
from tests.support.redis_server import RedisServer, free_port  # noqa: E402
from tests.support.tiny_models import (  # noqa: E402
    build_tiny_sd_pipeline,
    build_tiny_vit_classifier,
)
from tests.support.webhooks import TEST_WEBHOOK_SECRET  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=2)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="safegen-jobs-bench-"))
    redis_bin = shutil.which("redis-server")
    if redis_bin is None:
        raise SystemExit("redis-server is not installed (apt-get install -y redis-server)")
    redis = RedisServer(redis_bin, free_port(), work)
    redis.start()
    receiver = FaultServer()  # stamps each arrival with time.monotonic()

    server = start_server({
        "SAFEGEN_NSFW_MODEL": str(build_tiny_vit_classifier(work / "vit")),
        "SAFEGEN_GENERATOR_MODEL": str(build_tiny_sd_pipeline(work / "sd")),
        "SAFEGEN_BACKEND": "torch", "SAFEGEN_UPSCALER": "none", "SAFEGEN_RATE_LIMIT": "",
        "SAFEGEN_JOBS_STORAGE": redis.url, "SAFEGEN_WEBHOOK_SECRET": TEST_WEBHOOK_SECRET,
        "SAFEGEN_WEBHOOK_ALLOWED_SCHEMES": "http", "SAFEGEN_WEBHOOK_ALLOW_LOOPBACK": "true",
    }, work / "server.log", timeout_s=300)
    body = {"prompt": "a lighthouse at dusk", "width": args.size, "height": args.size,
            "num_inference_steps": args.steps, "response_format": "b64_json", "upscale": False}
    direct, queued = [], []
    try:
        with httpx.Client(base_url=server.url, headers=AUTH, timeout=120) as client:
            client.post("/generate", json=body).raise_for_status()  # warm
            for i in range(args.requests):
                began = time.perf_counter()
                client.post("/generate", json={**body, "seed": i}).raise_for_status()
                direct.append(time.perf_counter() - began)
                seen = len(receiver.requests)
                began = time.monotonic()
                client.post("/v1/generations", json={
                    **body, "seed": i, "webhook": f"{receiver.url}/hook"}).raise_for_status()
                while len(receiver.requests) == seen:  # the webhook is the completion event
                    time.sleep(0.001)
                queued.append(receiver.requests[-1].at - began)
    finally:
        stop_process(server.process, grace_s=10)
        receiver.close()
        redis.stop()
    p50d, p50q = percentile(direct, 0.5), percentile(queued, 0.5)
    print(f"{args.requests} requests each, {args.size}x{args.size}, {args.steps} steps")
    for name, values in (("/generate", direct), ("job -> webhook", queued)):
        print(f"{name:<20} p50 {percentile(values, 0.5) * 1000:7.1f} ms  "
              f"p95 {percentile(values, 0.95) * 1000:7.1f} ms")
    print(f"queued job overhead  p50 {(p50q - p50d) * 1000:+7.1f} ms  (ratio {p50q / p50d:.2f}x)")


if __name__ == "__main__":
    main()

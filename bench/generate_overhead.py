"""What NSFW scoring, JPEG encoding and the upload add on top of generation, end to end.

Starts moto (a real S3 API) and a real ``safegen serve`` process with the tiny diffusers pipeline
and a full-size ViT-B/16 (random weights: the real classifier's compute), then sends the spec's
request N times with ``enable_nsfw_check`` true and N times false. Prints, per setting, client
latency p50/p95 and the server's own split (``Server-Timing``): generation, then what comes after
it (encode + max(score, upload)), which is the overhead the two features add.

    python bench/generate_overhead.py --requests 30
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.app_client import AUTH, start_server  # noqa: E402
from tests.support.tiny_models import build_full_vit_b16, build_tiny_sd_pipeline  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def timings(header: str) -> dict[str, float]:
    return {k: float(v) / 1000 for k, v in (p.split(";dur=") for p in header.split(", "))}


def run(base: str, prefix: str, nsfw: bool, count: int, size: tuple[int, int], steps: int) -> dict:
    latencies, after_generation, generation = [], [], []
    with httpx.Client(timeout=120, headers=AUTH) as client:
        for _ in range(count):
            began = time.perf_counter()
            response = client.post(f"{base}/generate", json={
                "prompt": "a lighthouse at dusk", "width": size[0], "height": size[1],
                "num_inference_steps": steps, "s3_prefix": prefix, "upscale": "true",
                "enable_nsfw_check": "true" if nsfw else "false",
            })
            latencies.append(time.perf_counter() - began)
            response.raise_for_status()
            split = timings(response.headers["server-timing"])
            generation.append(split["generate"])
            after_generation.append(split["total"] - split["generate"])
    return {"latency": latencies, "after": after_generation, "generate": generation}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=30)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--height", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--tiny-classifier", action="store_true", help="smoke run")
    args = parser.parse_args()

    from moto.server import ThreadedMotoServer
    from tests.support.s3servers import S3Endpoint
    from tests.support.tiny_models import build_tiny_vit_classifier

    cache = Path(".cache/bench")
    vit = cache / ("tiny-vit" if args.tiny_classifier else "vit-b16")
    if not (vit / "config.json").exists():
        (build_tiny_vit_classifier if args.tiny_classifier else build_full_vit_b16)(vit)
    sd = cache / "tiny-sd"
    if not (sd / "model_index.json").exists():
        build_tiny_sd_pipeline(sd)

    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    host, port = moto.get_host_and_port()
    s3 = S3Endpoint(f"http://{host}:{port}", "bench", "testing", "testing")
    s3.client().create_bucket(Bucket="bench")
    prefix = s3.presign_put("bench/000/1.png", expires_s=3600)
    with tempfile.TemporaryDirectory() as tmp:
        server = start_server({
            "SAFEGEN_NSFW_MODEL": str(vit), "SAFEGEN_GENERATOR_MODEL": str(sd),
            "SAFEGEN_UPLOAD_ALLOWED_SCHEMES": "http", "SAFEGEN_UPLOAD_ALLOW_LOOPBACK": "true",
            "SAFEGEN_RATE_LIMIT": "",
        }, Path(tmp) / "server.log", timeout_s=300)
        try:
            run(server.url, prefix, True, 2, (args.width, args.height), args.steps)  # warm
            results = {
                nsfw: run(server.url, prefix, nsfw, args.requests, (args.width, args.height),
                          args.steps)
                for nsfw in (False, True)
            }
        finally:
            server.process.terminate()
            server.process.wait(60)
            moto.stop()
    print(f"\n/generate {args.width}x{args.height}, {args.steps} steps, upscale 2x, "
          f"{args.requests} requests each, one at a time")
    print(f"{'nsfw check':<12}{'latency p50':>12}{'p95':>8}{'generation p50':>16}"
          f"{'after gen p50':>15}{'p95':>8}")
    for nsfw, r in results.items():
        print(f"{'on' if nsfw else 'off':<12}{percentile(r['latency'], .5):>11.3f}s"
              f"{percentile(r['latency'], .95):>7.3f}s{statistics.median(r['generate']):>15.3f}s"
              f"{percentile(r['after'], .5):>14.3f}s{percentile(r['after'], .95):>7.3f}s")
    on, off = results[True], results[False]
    print(f"scoring adds p50 {percentile(on['after'], .5) - percentile(off['after'], .5):+.3f}s; "
          f"encode+upload+score together p50 {percentile(on['after'], .5):.3f}s, "
          f"p95 {percentile(on['after'], .95):.3f}s on top of generation")


if __name__ == "__main__":
    main()

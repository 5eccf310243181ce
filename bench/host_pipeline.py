"""What safegen's host side costs per image when the model is almost free.

A GPU runs ViT-B/16 at thousands of images/s, so there the CPU work around the model decides the
rate: HTTP and multipart parsing on the event loop, JPEG decode and resize in the decode threads,
batching, JSON. This runs a real ``safegen serve`` process with the tiny test classifier (its
forward costs well under a millisecond per image) under 64-image requests of 512x1024 JPEGs and
prints the images/s and the server's CPU time per image; it also times one thread decoding the
same JPEGs in-process, so the table separates decode (spread over cores) from the rest. Run from
the repository root:

    python bench/host_pipeline.py --duration 20
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "src"), str(REPO), str(REPO / "bench")]

from classify_throughput import make_images, prepare_model  # noqa: E402
from loadgen import run_load, safegen_server  # noqa: E402

PER_REQUEST = 64


def decode_ms_per_image(images: list[bytes], rounds: int) -> float:
    """One thread decoding for the model (fast JPEG path, the default), in milliseconds."""
    from safegen.imaging import ImageLimits, decode_for_model
    from safegen.settings import Settings

    limits = ImageLimits.from_settings(Settings())
    decode_for_model(images[0], limits, (224, 224), fast=True)
    started = time.perf_counter()
    for _ in range(rounds):
        for data in images:
            decode_for_model(data, limits, (224, 224), fast=True)
    return (time.perf_counter() - started) * 1000 / (rounds * len(images))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per load level")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 2, 4],
                        help="concurrent 64-image clients, one run each")
    parser.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache/safegen/bench")
    args = parser.parse_args()
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    model_dir = prepare_model(args.cache_dir, smoke=True)
    images = make_images(48)
    decode_ms = decode_ms_per_image(images, rounds=2 if args.duration < 5 else 10)
    rows = []
    with tempfile.TemporaryDirectory(prefix="safegen-bench-") as logs, safegen_server(
        model_dir, args.cache_dir, "torch", "fp32", Path(logs) / "safegen.log"
    ) as server:
        asyncio.run(run_load(server, images, clients=1, per_request=PER_REQUEST,
                             duration_s=600, max_requests=1))  # warm-up
        for clients in args.clients:
            result = asyncio.run(run_load(server, images, clients=clients,
                                          per_request=PER_REQUEST, duration_s=args.duration))
            rows.append((clients, result))
    print(f"cpu cores: {os.cpu_count()}; tiny classifier; {PER_REQUEST}-image requests of "
          f"512x1024 JPEGs; {args.duration:.0f} s per row")
    print(f"one thread decoding for the model: {decode_ms:.2f} ms/image "
          f"({1000 / decode_ms:.0f} images/s per core)")
    print(f"{'clients':>7} {'img/s':>8} {'p50 ms':>8} {'batch':>6} {'errors':>6} "
          f"{'cpu ms/img':>10} {'not decode':>10}")
    for clients, r in rows:
        cpu = r.cpu_ms_per_image
        print(f"{clients:>7} {r.rate:>8.0f} {r.percentile(0.5) * 1000:>8.0f} "
              f"{r.batch_mean or 0:>6.1f} {r.errors:>6} {cpu:>10.2f} {cpu - decode_ms:>10.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

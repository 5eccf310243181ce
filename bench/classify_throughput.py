"""Side-by-side: safegen's /v1/classify against the naive FastAPI + transformers pipeline baseline.

One run starts the baseline (bench/naive_app.py) and then safegen, each a real uvicorn process on
127.0.0.1 (never both at once), with the same model directory (ViT-B/16 shape, random weights),
the same 512x1024 JPEGs and the same load:

(a) 16 concurrent clients sending one image per request, for ``--duration`` seconds;
(b) 2 concurrent clients sending 64-image requests, for ``--duration`` seconds;
(c) idle: lone single-image requests, one at a time.

Then, with both servers stopped, safegen's backend is built in-process (the path the server chose:
with ``auto`` the cached per-host choice) and its raw forward pass timed at the batch sizes the
server formed, so the table shows end-to-end throughput as a fraction of what the model alone can
do; and ``cpu_ceiling.py``'s GEMM ceiling of this host is measured, so every rate is also a
fraction of the most the best kernel here allows. Run from the repository root:

    python bench/classify_throughput.py --backend onnx --precision int8 --duration 30
    python bench/classify_throughput.py --smoke      # tiny model, seconds (CI)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "src"), str(REPO), str(REPO / "bench")]

from cpu_ceiling import best, ceilings  # noqa: E402  (after the path set-up above)
from loadgen import (  # noqa: E402
    Result,
    Server,
    idle_latency,
    median,
    naive_server,
    run_load,
    safegen_server,
)
from safegen.moderation.backends.registry import backend_names  # noqa: E402

CLIENTS, BATCH_CLIENTS, BATCH_IMAGES = 16, 2, 64


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backend", default="auto", choices=["auto", *backend_names()])
    parser.add_argument("--precision", default="auto",
                        choices=["auto", "fp32", "bf16", "fp16", "int8"])
    parser.add_argument("--duration", type=float, default=30.0, help="seconds per scenario")
    parser.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache/safegen/bench",
                        help="model directory and ONNX export cache")
    parser.add_argument("--profile", type=Path, help="py-spy safegen during (a) into this dir")
    parser.add_argument("--smoke", action="store_true", help="tiny model, a few requests")
    return parser.parse_args(argv)


def prepare_model(cache_dir: Path, smoke: bool) -> Path:
    from tests.support.tiny_models import build_full_vit_b16, build_tiny_vit_classifier

    path = cache_dir / ("vit-tiny" if smoke else "vit-b16")
    if not (path / "model.safetensors").exists():
        (build_tiny_vit_classifier if smoke else build_full_vit_b16)(path)
    return path


def make_images(count: int) -> list[bytes]:
    from tests.support.images import jpeg

    return [jpeg(seed, (512, 1024)) for seed in range(count)]


def measure_server(
    server: Server, images: list[bytes], args: argparse.Namespace, profile: Path | None = None
) -> dict[str, Result]:
    cap = 2 * CLIENTS if args.smoke else None
    run = asyncio.run
    # Warm-up: the first requests of a process pay one-off costs (allocator, lazy imports).
    run(run_load(server, images, clients=4, per_request=1, duration_s=600, max_requests=4))
    spy = None
    if profile is not None:
        out = profile / f"{server.name}-a.txt"
        spy = subprocess.Popen(["py-spy", "record", "--pid", str(server.process.pid), "--rate",
                                "50", "--format", "raw", "--threads", "--nonblocking",
                                "-o", str(out), "--duration", str(int(args.duration))],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    results = {"a": run(run_load(server, images, clients=CLIENTS, per_request=1,
                                 duration_s=args.duration, max_requests=cap))}
    if spy is not None:
        spy.wait(60)
    per_request = 8 if args.smoke else BATCH_IMAGES
    results["b"] = run(run_load(server, images, clients=BATCH_CLIENTS, per_request=per_request,
                                duration_s=args.duration, max_requests=2 if args.smoke else None))
    results["idle"] = run(idle_latency(server, images[0], 3 if args.smoke else 15))
    return results


def raw_forward(model_dir: Path, cache_dir: Path, args: argparse.Namespace, images: list[bytes],
                sizes: set[int]) -> tuple[str, dict[int, tuple[float, float]]]:
    """In-process: ``{batch size: (images/s, median seconds per call)}`` of backend.predict."""
    import numpy as np

    from safegen.imaging import ImageLimits, decode_for_model
    from safegen.moderation.loading import load_classifier
    from safegen.moderation.path_choice import PathRequest, choose
    from safegen.settings import Settings

    defaults = Settings()
    loaded = load_classifier(str(model_dir), cache_dir)
    # The server's settings, so ``auto`` reads back the choice the server made (same host key).
    backend, _ = choose(loaded, PathRequest(
        backend=args.backend, precision=args.precision, device="auto", cache_dir=cache_dir,
        max_drift=defaults.auto_max_drift, max_batch_size=defaults.max_batch_size,
        tune_batch_size=defaults.auto_batch_size,
    ))
    pixels = [decode_for_model(d, ImageLimits.from_settings(defaults), loaded.preprocessing.size,
                               fast=True) for d in images]
    timings = {}
    for size in sorted(sizes):
        batch = np.stack([pixels[i % len(pixels)] for i in range(size)])
        backend.predict(batch)
        calls: list[float] = []
        budget = time.perf_counter() + (0.5 if args.smoke else max(6.0, args.duration / 3))
        while time.perf_counter() < budget or len(calls) < 5:
            started = time.perf_counter()
            backend.predict(batch)
            calls.append(time.perf_counter() - started)
        # median, not mean: a spike from another process on the box should not set the bar
        timings[size] = (size / median(calls), median(calls))
    return f"{backend.name}-{backend.precision}", timings


def report(base: dict[str, Result], ours: dict[str, Result], path: str,
           raw: dict[int, tuple[float, float]], host: dict[str, float]) -> str:
    ms = 1000.0
    lines = [f"safegen path: {path}   (baseline: transformers pipeline, per request, async def)",
             f"{'scenario':<28}{'server':<9}{'img/s':>8}{'p50 ms':>9}{'p95 ms':>9}"
             f"{'batch':>7}{'errors':>7}{'ratio':>8}{'cpu ms/img':>12}{'load':>6}"]
    names = {"a": f"(a) {CLIENTS} x 1-image clients",
             "b": f"(b) {BATCH_CLIENTS} x {BATCH_IMAGES}-image requests"}
    for key, title in names.items():
        for label, res in (("naive", base[key]), ("safegen", ours[key])):
            batch = f"{res.batch_mean:.1f}" if res.batch_mean else "1"
            ratio = f"{res.rate / base[key].rate:.2f}x" if label == "safegen" else ""
            lines.append(f"{title if label == 'naive' else '':<28}{label:<9}{res.rate:>8.2f}"
                         f"{res.percentile(0.5) * ms:>9.0f}{res.percentile(0.95) * ms:>9.0f}"
                         f"{batch:>7}{res.errors:>7}{ratio:>8}{res.cpu_ms_per_image:>12.0f}"
                         f"{res.load:>6.1f}")
    lines.append("raw forward (backend.predict in-process, same batch size as the server formed):")
    for key, title in names.items():
        size = max(1, round(ours[key].batch_mean or 1))
        rate, _ = raw[size]
        lines.append(f"  {title:<34} batch {size:>3}: {rate:7.2f} img/s; "
                     f"e2e = {ours[key].rate / rate:.0%} of raw")
    one = raw[1][1]
    for label, res in (("naive", base["idle"]), ("safegen", ours["idle"])):
        p50 = res.percentile(0.5)
        lines.append(f"  idle lone request p50 {label:<8} {p50 * ms:7.0f} ms = {p50 / one:.2f}x "
                     f"raw batch-1 forward ({one * ms:.0f} ms)")
    kind = "int8" if path.endswith("-int8") else "float"
    kernel, ceiling = best(host, kind)
    lines.append(f"host ceiling ({kind} GEMMs alone, best kernel here: {kernel}): "
                 f"{ceiling:.2f} img/s = {ceiling / base['a'].rate:.2f}x naive (a)")
    for key, title in names.items():
        lines.append(f"  {title:<34} naive {base[key].rate / ceiling:6.0%}  "
                     f"safegen {ours[key].rate / ceiling:6.0%} of the ceiling")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.smoke:
        args.duration = min(args.duration, 1.0)
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    model_dir = prepare_model(args.cache_dir, args.smoke)
    images = make_images(8 if args.smoke else 48)
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="safegen-bench-") as logs:
        log_dir = Path(logs)
        print("baseline: starting the naive app ...", file=sys.stderr, flush=True)
        with naive_server(model_dir, log_dir / "naive.log") as server:
            base = measure_server(server, images, args)
        print("safegen: starting the service ...", file=sys.stderr, flush=True)
        with safegen_server(model_dir, args.cache_dir, args.backend, args.precision,
                            log_dir / "safegen.log") as server:
            ours = measure_server(server, images, args, args.profile)
    sizes = {1} | {max(1, round(r.batch_mean or 1)) for r in (ours["a"], ours["b"])}
    path, raw = raw_forward(model_dir, args.cache_dir, args, images, sizes)
    host = ceilings(batch=1 if args.smoke else 16, repeats=1 if args.smoke else 3)
    print(f"cpu cores: {os.cpu_count()}; duration per scenario: {args.duration:.0f} s")
    print(report(base, ours, path, raw, host))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

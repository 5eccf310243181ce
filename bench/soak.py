"""Soak test (not CI): a real ``safegen serve`` process under mixed valid, invalid and hostile load.

Builds the tiny classifier and the tiny diffusers pipeline, starts the server and two scripted
storage servers on 127.0.0.1 (one answers 200, one always 503), then runs ``--concurrency``
clients for ``--duration`` seconds, each picking a request kind at random (weights below). At the
end it checks that nothing was lost (every 200 from /generate is a stored upload, the queue is
empty), stops the server with SIGTERM and prints requests served, unexpected outcomes by kind,
p50/p99 latency per kind and the server's RSS at start, during and at the end. Run from the repo:

    python bench/soak.py --duration 60 --concurrency 8 [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "src"), str(REPO)]

import httpx  # noqa: E402
import psutil  # noqa: E402
from tests.support import images  # noqa: E402
from tests.support.app_client import free_port  # noqa: E402
from tests.support.faultserver import FaultServer, Step  # noqa: E402
from tests.support.tiny_models import build_tiny_sd_pipeline, build_tiny_vit_classifier  # noqa: E402

KEY = "soak-" + os.urandom(12).hex()
AUTH = {"Authorization": f"Bearer {KEY}"}
MAX_REQUEST = 2_000_000
# kind -> (weight, statuses that are the right answer)
KINDS: dict[str, tuple[int, set[int]]] = {
    "classify_ok": (30, {200}), "classify_bad_images": (10, {200}),
    # Starlette's form parser refuses more files than the limit with 400 before our 413 check.
    "classify_oversized": (6, {413}), "classify_too_many": (4, {400, 413}),
    "classify_no_key": (4, {401}), "generate_ok": (20, {200}),
    "generate_invalid": (10, {422}), "generate_ssrf": (6, {422}),
    "generate_storage_down": (4, {502}), "generate_inline": (6, {200}),
}


@dataclass
class Fixtures:
    ok_store: FaultServer
    down_store: FaultServer
    good: list[bytes]
    bad: list[bytes]


def request_for(kind: str, fx: Fixtures, rng: random.Random) -> tuple[str, dict[str, object]]:
    small = {"prompt": "a lighthouse", "width": 64, "height": 64, "num_inference_steps": 2}
    files = [("files", (f"{i}.jpg", rng.choice(fx.good))) for i in range(rng.randint(1, 4))]
    if kind == "classify_ok":
        return "/v1/classify", {"files": files}
    if kind == "classify_bad_images":
        return "/v1/classify", {"files": [*files[:1], ("files", ("x", rng.choice(fx.bad)))]}
    if kind == "classify_oversized":
        return "/v1/classify", {"files": [("files", ("big.jpg", os.urandom(MAX_REQUEST + 1)))]}
    if kind == "classify_too_many":
        return "/v1/classify", {"files": [("files", ("a.jpg", fx.good[0]))] * 9}
    if kind == "classify_no_key":
        return "/v1/classify", {"files": files, "headers": {}}
    if kind == "generate_ok":
        url = f"{fx.ok_store.url}/bucket/{rng.randrange(10**6)}/1.png?Signature=soak"
        return "/generate", {"json": {**small, "s3_prefix": url}}
    if kind == "generate_invalid":
        return "/generate", {"json": {**small, "width": rng.choice([65, 0, 99999]),
                                      "s3_prefix": f"{fx.ok_store.url}/b/1.png"}}
    if kind == "generate_ssrf":
        return "/generate", {"json": {**small, "s3_prefix": "http://169.254.169.254/x/1.png"}}
    if kind == "generate_storage_down":
        return "/generate", {"json": {**small, "s3_prefix": f"{fx.down_store.url}/b/1.png"}}
    return "/generate", {"json": {**small, "response_format": "b64_json"}}


async def client_loop(client: httpx.AsyncClient, fx: Fixtures, stop_at: float, seed: int,
                      results: dict[str, list[tuple[int | str, float]]]) -> None:
    rng = random.Random(seed)
    names, weights = list(KINDS), [w for w, _ in KINDS.values()]
    while time.monotonic() < stop_at:
        kind = rng.choices(names, weights)[0]
        path, kwargs = request_for(kind, fx, rng)
        headers = kwargs.pop("headers", AUTH)
        started = time.monotonic()
        try:
            response = await client.post(path, headers=headers, **kwargs)  # type: ignore[arg-type]
            outcome: int | str = response.status_code
        except httpx.HTTPError as exc:
            outcome = type(exc).__name__
        results[kind].append((outcome, time.monotonic() - started))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else 0.0


def metric(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


async def soak(url: str, fx: Fixtures, duration: float, concurrency: int,
               proc: psutil.Process) -> dict[str, object]:
    results: dict[str, list[tuple[int | str, float]]] = defaultdict(list)
    rss = [proc.memory_info().rss]
    stop_at = time.monotonic() + duration
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        loops = [asyncio.create_task(client_loop(client, fx, stop_at, i, results))
                 for i in range(concurrency)]
        while not all(t.done() for t in loops):
            await asyncio.sleep(min(5.0, max(0.1, stop_at - time.monotonic())))
            rss.append(proc.memory_info().rss)
        await asyncio.gather(*loops)
        metrics = (await client.get("/metrics", headers=AUTH)).text
    return {"results": results, "rss": rss, "metrics": metrics}


def summarise(run: dict[str, object], fx: Fixtures, duration: float) -> dict[str, object]:
    results: dict[str, list[tuple[int | str, float]]] = run["results"]  # type: ignore[assignment]
    metrics: str = run["metrics"]  # type: ignore[assignment]
    rss: list[int] = run["rss"]  # type: ignore[assignment]
    kinds = {}
    unexpected: Counter[str] = Counter()
    for kind, rows in sorted(results.items()):
        statuses = Counter(str(outcome) for outcome, _ in rows)
        for outcome, count in statuses.items():
            if not outcome.isdigit() or int(outcome) not in KINDS[kind][1]:
                unexpected[f"{kind}:{outcome}"] += count
        latencies = [seconds for _, seconds in rows]
        kinds[kind] = {"n": len(rows), "statuses": dict(statuses),
                       "p50_ms": round(1000 * percentile(latencies, 0.5), 1),
                       "p99_ms": round(1000 * percentile(latencies, 0.99), 1)}
    every = [seconds for rows in results.values() for _, seconds in rows]
    generated_ok = sum(1 for o, _ in results.get("generate_ok", []) if o == 200)
    stored = sum(1 for r in fx.ok_store.requests if r.method == "PUT")
    return {
        "duration_s": duration, "requests": len(every),
        "requests_per_s": round(len(every) / duration, 1),
        "unexpected": dict(unexpected), "p50_ms": round(1000 * percentile(every, 0.5), 1),
        "p99_ms": round(1000 * percentile(every, 0.99), 1), "kinds": kinds,
        "rss_mib": {"start": round(rss[0] / 2**20, 1), "max": round(max(rss) / 2**20, 1),
                    "end": round(rss[-1] / 2**20, 1),
                    "every_5s": [round(r / 2**20) for r in rss]},
        "generate_ok_200": generated_ok, "uploads_stored": stored,
        "uploads_success_metric": metric(metrics, 'safegen_uploads_total{result="success"}'),
        "uploads_failure_metric": metric(metrics, 'safegen_uploads_total{result="failure"}'),
        "queue_depth_at_end": metric(metrics, "safegen_queue_depth"),
    }


def start_server(work: Path, port: int) -> subprocess.Popen[bytes]:
    env = {
        **os.environ, "HF_HUB_OFFLINE": "1", "SAFEGEN_HOST": "127.0.0.1",
        "SAFEGEN_PORT": str(port), "SAFEGEN_API_KEYS": KEY, "SAFEGEN_RATE_LIMIT": "",
        "SAFEGEN_NSFW_MODEL": str(work / "vit"), "SAFEGEN_GENERATOR_MODEL": str(work / "sd"),
        "SAFEGEN_UPSCALER": "lanczos2x", "SAFEGEN_MAX_BATCH_SIZE": "16",
        "SAFEGEN_UPLOAD_ALLOWED_SCHEMES": "http", "SAFEGEN_UPLOAD_ALLOW_LOOPBACK": "true",
        "SAFEGEN_UPLOAD_BACKOFF_S": "0.1,0.2,0.4", "SAFEGEN_MAX_REQUEST_BYTES": str(MAX_REQUEST),
        "SAFEGEN_MAX_IMAGE_BYTES": "1000000", "SAFEGEN_MAX_FILES_PER_REQUEST": "8",
        "SAFEGEN_LOG_LEVEL": os.environ.get("SOAK_LOG_LEVEL", "warning"),
        "SAFEGEN_SHUTDOWN_GRACE_S": "20",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "src"),
                                                    os.environ.get("PYTHONPATH")])),
    }
    log = (work / "server.log").open("wb")
    process = subprocess.Popen([sys.executable, "-m", "safegen", "serve"], env=env,
                               stdout=log, stderr=log)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit((work / "server.log").read_text(errors="replace"))
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return process
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    process.kill()
    raise SystemExit("server not ready in 120 s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=60)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--json", type=Path, help="also write the summary here")
    parser.add_argument("--server-log", type=Path, help="keep the server's log here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="safegen-soak-") as tmp:
        work = Path(tmp)
        build_tiny_vit_classifier(work / "vit")
        build_tiny_sd_pipeline(work / "sd")
        fx = Fixtures(FaultServer(), FaultServer(),
                      [images.jpeg(i, (256, 256)) for i in range(8)],
                      [b"", b"GIF89a junk", images.truncated_jpeg(), os.urandom(4096),
                       images.png_with_declared_size(100_000, 100_000)])
        fx.down_store.script(Step(503))
        port = free_port()
        process = start_server(work, port)
        try:
            run = asyncio.run(soak(f"http://127.0.0.1:{port}", fx, args.duration,
                                   args.concurrency, psutil.Process(process.pid)))
            summary = summarise(run, fx, args.duration)
            stopped = time.monotonic()
            process.send_signal(signal.SIGTERM)
            summary["exit_code"] = process.wait(60)
            summary["stop_s"] = round(time.monotonic() - stopped, 2)
        finally:
            if process.poll() is None:
                process.kill()
            if args.server_log:
                args.server_log.write_bytes((work / "server.log").read_bytes())
            fx.ok_store.close()
            fx.down_store.close()
    print(json.dumps(summary, indent=2))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    lost = summary["uploads_stored"] < summary["generate_ok_200"]
    return 1 if summary["unexpected"] or lost or summary["exit_code"] != 0 else 0


if __name__ == "__main__":
    raise SystemExit(main())

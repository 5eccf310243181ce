"""What hostile requests cost a real server: peak memory and event-loop blocking, per case.

Starts ``safegen serve`` (tiny local classifier, no download) as a process and, for each case,
resets the process's peak RSS (``/proc/PID/clear_refs``), sends the request while a probe polls
``/healthz`` every 5 ms, and prints the status answered, the rise of peak RSS and the longest
``/healthz`` wait (a blocked event loop shows up there). Linux only; run as the process's owner.

    python bench/hostile_requests.py
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support.faultserver import FaultServer, Step  # noqa: E402
from tests.support.processes import stop_process  # noqa: E402
from tests.support.tiny_models import (  # noqa: E402
    build_tiny_sd_pipeline,
    build_tiny_vit_classifier,
)

KEY = "bench-hostile-key-0123456789"
OTHER_KEY = "bench-hostile-other-key-98765"
SMALL = {"width": 64, "height": 128, "num_inference_steps": 2, "upscale": False}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM")


def reset_peak(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def json_array_of_objects(megabytes: int) -> bytes:
    return b"[" + b",".join([b"{}"] * (megabytes * 1024 * 1024 // 3)) + b"]"


def images_of_abc(megabytes: int) -> bytes:
    count = megabytes * 1024 * 1024 // 6
    return b'{"images": [' + b",".join([b'"abc"'] * count) + b"]}"


def one_bit_png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("1", (width, height)).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


async def measure(
    url: str, pid: int, send: Callable[[httpx.AsyncClient], object]
) -> tuple[int, float, float]:
    """(status, peak RSS rise MB, longest /healthz wait ms) while ``send`` runs."""
    reset_peak(pid)
    await asyncio.sleep(0.2)
    baseline = peak_rss_mb(pid)
    worst = 0.0
    done = asyncio.Event()

    async def probe() -> None:
        nonlocal worst
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            while not done.is_set():
                started = time.perf_counter()
                await client.get("/healthz")
                worst = max(worst, time.perf_counter() - started)
                await asyncio.sleep(0.005)

    prober = asyncio.create_task(probe())
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        response = await send(client)  # type: ignore[misc]
    done.set()
    await prober
    await asyncio.sleep(0.2)
    return response.status_code, peak_rss_mb(pid) - baseline, worst * 1000


async def run_cases(url: str, pid: int) -> None:
    auth = {"Authorization": f"Bearer {KEY}"}
    print(f"{'case':58} {'status':>6} {'peak RSS +MB':>12} {'max /healthz ms':>15}")

    async def row(name: str, send: Callable[[httpx.AsyncClient], object]) -> None:
        status, rss, lag = await measure(url, pid, send)
        print(f"{name:58} {status:>6} {rss:>12.0f} {lag:>15.0f}", flush=True)

    for megabytes in (9, 33):
        body = json_array_of_objects(megabytes)
        await row(
            f"1. no key, POST /generate, {megabytes} MB of [{{}},...]",
            lambda c, b=body: c.post("/generate", content=b,
                                     headers={"content-type": "application/json"}),
        )
    # Spend the budget (SAFEGEN_RATE_LIMIT=2/minute), then send a large body with the same key.
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        for _ in range(3):
            await client.post("/v1/classify", json={"images": ["AAAA"]}, headers=auth)
    body = images_of_abc(30)
    await row(
        "2. spent key, POST /v1/classify, 30 MB of {images: [abc..]}",
        lambda c: c.post("/v1/classify", content=body,
                         headers={**auth, "content-type": "application/json"}),
    )


async def run_decode_case(url: str, pid: int) -> None:
    auth = {"Authorization": f"Bearer {KEY}"}
    bomb = one_bit_png(8000, 5000)

    async def send(client: httpx.AsyncClient) -> httpx.Response:
        files = [("files", (f"{i}.png", bomb, "image/png")) for i in range(4)]
        return await client.post("/v1/classify", files=files, headers=auth)

    status, rss, lag = await measure(url, pid, send)
    print(f"{f'5. 4 x {len(bomb) / 1024:.1f} KB 1-bit PNG declaring 40 MP':58} {status:>6} "
          f"{rss:>12.0f} {lag:>15.0f}", flush=True)


async def run_stalled_uploads_case(url: str, stalled: FaultServer, healthy: FaultServer) -> None:
    """100 /generate jobs whose storage sends one byte every 0.5 s, then one to a healthy one."""
    auth = {"Authorization": f"Bearer {KEY}"}
    async with httpx.AsyncClient(base_url=url, timeout=300) as client:
        stuck = [
            asyncio.create_task(client.post("/generate", headers=auth, json={
                "prompt": "x", "s3_prefix": f"{stalled.url}/b/1.png", **SMALL,
            }))
            for _ in range(100)
        ]
        # Until every job has either reached the storage or been answered (refused).
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            answered = sum(task.done() for task in stuck)
            if answered + len(stalled.requests) >= 100 or (
                answered + len(stalled.requests) > 0 and time.monotonic() > deadline - 45
            ):
                break
            await asyncio.sleep(0.1)
        refused = [t.result().status_code for t in stuck if t.done()]
        started = time.perf_counter()
        try:
            response = await client.post("/generate", headers={
                "Authorization": f"Bearer {OTHER_KEY}"}, json={
                "prompt": "x", "s3_prefix": f"{healthy.url}/b/1.png", **SMALL,
            })
            timing = response.headers.get("server-timing", "")
            outcome = (f"{response.status_code} {response.json().get('error', {}).get('code', '')}"
                       f" [{timing}]")
        except httpx.TimeoutException:
            outcome = "timeout"
        elapsed = time.perf_counter() - started
        print(f"3. healthy /generate under 100 stalled uploads: {outcome} in {elapsed:.2f} s; "
              f"stalled jobs at the storage: {len(stalled.requests)}, refused at once: "
              f"{len(refused)} ({', '.join(sorted(set(map(str, refused)))) or '-'})", flush=True)
        stalled.release.set()
        for task in stuck:
            task.cancel()
        await asyncio.gather(*stuck, return_exceptions=True)


def serve(model: Path, env_extra: dict[str, str]) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {
        **os.environ, "SAFEGEN_NSFW_MODEL": str(model), "SAFEGEN_API_KEYS": KEY,
        "SAFEGEN_PORT": str(port), "SAFEGEN_LOG_LEVEL": "warning", **env_extra,
    }
    process = subprocess.Popen([sys.executable, "-m", "safegen", "serve"], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        if process.poll() is not None:
            raise RuntimeError("server exited at start")
        time.sleep(0.2)
    raise RuntimeError("server not ready in 120 s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only-stalled", action="store_true", help="case 3 only")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = build_tiny_vit_classifier(Path(tmp) / "classifier")
        if not args.only_stalled:
            run_body_and_decode_cases(model)
        stalled_uploads(model, Path(tmp))


def run_body_and_decode_cases(model: Path) -> None:
    process, url = serve(model, {"SAFEGEN_RATE_LIMIT": "2/minute"})
    try:
        asyncio.run(run_cases(url, process.pid))
    finally:
        stop_process(process, grace_s=10)
    process, url = serve(model, {"SAFEGEN_DECODE_THREADS": "4"})
    try:
        asyncio.run(run_decode_case(url, process.pid))
    finally:
        stop_process(process, grace_s=10)


def stalled_uploads(model: Path, tmp: Path) -> None:
    stalled, healthy = FaultServer(), FaultServer(host_name="localhost")
    stalled.script(Step(200, body=b"x" * 10_000, trickle_s=0.5))
    generator = build_tiny_sd_pipeline(tmp / "generator")
    process, url = serve(model, {
        "SAFEGEN_GENERATOR_MODEL": str(generator), "SAFEGEN_API_KEYS": f"{KEY},{OTHER_KEY}",
        "SAFEGEN_RATE_LIMIT": "", "SAFEGEN_UPLOAD_ALLOWED_SCHEMES": "http",
        "SAFEGEN_UPLOAD_ALLOW_LOOPBACK": "true", "SAFEGEN_GENERATOR_MAX_PENDING": "200",
    })
    try:
        asyncio.run(run_stalled_uploads_case(url, stalled, healthy))
    finally:
        stop_process(process, grace_s=2)
        stalled.close()
        healthy.close()


if __name__ == "__main__":
    main()

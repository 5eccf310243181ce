"""Load generation for the classification benchmarks: server processes, client loops, metrics.

Each server is a real uvicorn process on 127.0.0.1 (a free port), started, measured and stopped
before the next one starts, so the two never compete for the CPU.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from tests.support.processes import stop_process

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent


@dataclass
class Server:
    """A running server process and how to talk to it."""

    name: str
    url: str
    process: subprocess.Popen[bytes]
    headers: dict[str, str] = field(default_factory=dict)
    metrics_path: str | None = None  # Prometheus endpoint, if the server has one


@dataclass
class Result:
    """One scenario against one server."""

    images: int
    seconds: float
    latencies: list[float]
    errors: int = 0  # images not scored (failed requests count all their images)
    batch_mean: float | None = None  # from the server's safegen_batch_size histogram
    forwards: int | None = None
    cpu_s: float = 0.0  # CPU time the server process used (all threads): robust to a busy box
    load: float = 0.0  # 1-minute load average when the scenario started (other processes)

    @property
    def cpu_ms_per_image(self) -> float:
        return 1000 * self.cpu_s / self.images if self.images else float("nan")

    @property
    def rate(self) -> float:
        return self.images / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def server_process(
    name: str, argv: Sequence[str], env: dict[str, str], ready_path: str, log: Path,
    *, port: int, timeout_s: float = 600, **extra: object,
) -> Iterator[Server]:
    """Start ``argv`` and wait until ``ready_path`` answers 200; stop it (SIGTERM) on exit."""
    url = f"http://127.0.0.1:{port}"
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **env}
    with log.open("wb") as sink:
        process = subprocess.Popen(list(argv), env=full_env, stdout=sink, stderr=sink, cwd=REPO)
    server = Server(name, url, process, **extra)  # type: ignore[arg-type]
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited early:\n{log.read_text(errors='replace')}")
            try:
                response = httpx.get(url + ready_path, headers=server.headers, timeout=2)
                if response.status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} not ready in {timeout_s}s")
            time.sleep(0.25)
        yield server
    finally:
        stop_process(process, grace_s=30)


def naive_server(model_dir: Path, log: Path) -> AbstractContextManager[Server]:
    port = free_port()
    argv = [sys.executable, "-m", "uvicorn", "naive_app:app", "--app-dir", str(BENCH_DIR),
            "--host", "127.0.0.1", "--port", str(port), "--no-access-log", "--log-level", "warning"]
    return server_process("naive", argv, {"NAIVE_MODEL": str(model_dir)}, "/health", log,
                          port=port)


def safegen_server(
    model_dir: Path, cache_dir: Path, backend: str, precision: str, log: Path
) -> AbstractContextManager[Server]:
    port = free_port()
    key = "bench-" + os.urandom(12).hex()
    env = {
        "SAFEGEN_HOST": "127.0.0.1", "SAFEGEN_PORT": str(port),
        "SAFEGEN_NSFW_MODEL": str(model_dir), "SAFEGEN_MODEL_CACHE_DIR": str(cache_dir),
        "SAFEGEN_BACKEND": backend, "SAFEGEN_PRECISION": precision,
        "SAFEGEN_API_KEYS": key, "SAFEGEN_RATE_LIMIT": "", "SAFEGEN_LOG_LEVEL": "warning",
        # The baseline has no timeout; a forward pass on a busy 2-core box may be slow, not stuck.
        "SAFEGEN_INFERENCE_TIMEOUT_S": "600",
        # Nor does it refuse work by expected wait: on a slow host two 64-image requests exceed the
        # default 30 s and would be answered 503 at once, leaving nothing to compare.
        "SAFEGEN_MAX_QUEUE_WAIT_S": "600",
        # Payloads repeat: the duplicate cache would stand in for the model in the figures.
        "SAFEGEN_RESULT_CACHE_SIZE": "0",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "src"),
                                                    os.environ.get("PYTHONPATH")])),
    }
    return server_process(
        "safegen", [sys.executable, "-m", "safegen", "serve"], env, "/readyz", log, port=port,
        headers={"Authorization": f"Bearer {key}"}, metrics_path="/metrics",
    )


_BUCKET = re.compile(r'^safegen_batch_size_(sum|count)\s+([0-9.eE+-]+)$', re.MULTILINE)


def batch_histogram(server: Server) -> tuple[float, float] | None:
    """``(sum, count)`` of ``safegen_batch_size`` now, or None when the server has no metrics."""
    if server.metrics_path is None:
        return None
    text = httpx.get(server.url + server.metrics_path, headers=server.headers, timeout=10).text
    found = dict(_BUCKET.findall(text))
    return float(found.get("sum", 0)), float(found.get("count", 0))


def _scored(response: httpx.Response) -> int:
    """Images that came back with a score (a 200 may carry per-image errors)."""
    if response.status_code != 200:
        return 0
    results = response.json().get("results", [])
    return sum(1 for r in results if "error" not in r)


def server_cpu_s(server: Server) -> float:
    """User + system CPU seconds of the server process so far (Linux /proc)."""
    fields = Path(f"/proc/{server.process.pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def run_load(
    server: Server, images: Sequence[bytes], *, clients: int, per_request: int,
    duration_s: float, max_requests: int | None = None,
) -> Result:
    """``clients`` loops sending ``per_request`` images each, back to back, for ``duration_s``.

    Requests in flight at the deadline are allowed to finish and count: the rate is images
    answered over the time until the last answer, so long requests are not cut off.
    """
    before = batch_histogram(server)
    load, cpu_before = os.getloadavg()[0], server_cpu_s(server)
    latencies: list[float] = []
    counts = {"images": 0, "errors": 0, "sent": 0}
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    timeout = httpx.Timeout(600)
    async with httpx.AsyncClient(base_url=server.url, headers=server.headers, limits=limits,
                                 timeout=timeout) as client:
        started = time.perf_counter()
        deadline = started + duration_s

        async def worker(index: int) -> None:
            offset = index * per_request
            while time.perf_counter() < deadline:
                if max_requests is not None and counts["sent"] >= max_requests:
                    return
                counts["sent"] += 1
                batch = [images[(offset + i) % len(images)] for i in range(per_request)]
                offset += per_request * clients
                files = [("files", (f"{i}.jpg", data, "image/jpeg")) for i, data in
                         enumerate(batch)]
                sent = time.perf_counter()
                response = await client.post("/v1/classify", files=files)
                latencies.append(time.perf_counter() - sent)
                scored = _scored(response)
                counts["images"] += scored
                counts["errors"] += per_request - scored

        await asyncio.gather(*(worker(i) for i in range(clients)))
        elapsed = time.perf_counter() - started
    result = Result(counts["images"], elapsed, latencies, counts["errors"],
                    cpu_s=server_cpu_s(server) - cpu_before, load=load)
    after = batch_histogram(server)
    if before is not None and after is not None and after[1] > before[1]:
        result.forwards = int(after[1] - before[1])
        result.batch_mean = (after[0] - before[0]) / (after[1] - before[1])
    return result


async def idle_latency(server: Server, image: bytes, requests: int) -> Result:
    """Lone single-image requests, one at a time with a pause between: nothing to batch with."""
    latencies = []
    async with httpx.AsyncClient(base_url=server.url, headers=server.headers,
                                 timeout=120) as client:
        for _ in range(requests):
            await asyncio.sleep(0.05)
            sent = time.perf_counter()
            response = await client.post("/v1/classify",
                                         files=[("files", ("0.jpg", image, "image/jpeg"))])
            latencies.append(time.perf_counter() - sent)
            response.raise_for_status()
    return Result(requests, sum(latencies), latencies)


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")

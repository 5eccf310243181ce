"""Side-by-side: the Ray Serve path against the single-process server, same model, same load.

16 concurrent clients each send one 512x1024 JPEG per request for ``--duration`` seconds, first
to ``python -m safegen serve`` and then to the same app on a local loopback Ray Serve (1 ingress
replica; 1 classifier replica using every core, then 2 replicas of one torch thread each). Never
two servers at once. Memory is the summed RSS and PSS of every process of the server (for Ray:
GCS, raylet, controller, proxy, replicas), read from /proc while the load runs; CPU ms/img is the
CPU time all those processes used per image answered (little moved by other load on the machine,
unlike img/s). Run from the repository root, on a quiet machine:

    python bench/ray_vs_single.py --duration 20
    python bench/ray_vs_single.py --smoke        # tiny model, seconds
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "src"), str(REPO), str(REPO / "bench")]

from classify_throughput import make_images, prepare_model  # noqa: E402
from loadgen import Result, Server, free_port, run_load, safegen_server  # noqa: E402

CLIENTS = 16


def process_tree(root: int, marker: str | None = None) -> set[int]:
    """``root`` and its descendants, plus processes whose command line holds ``marker``."""
    children: dict[int, list[int]] = {}
    found = {root}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if marker and marker.encode() in (entry / "cmdline").read_bytes():
                found.add(int(entry.name))
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    todo = list(found)
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def memory_mib(pids: set[int]) -> tuple[float, float]:
    """Summed (RSS, PSS) in MiB; PSS splits shared pages (torch's libraries) between processes."""
    rss = pss = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Rss:"):
                    rss += int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss += int(line.split()[1])
        except OSError:
            continue
    return rss / 1024, pss / 1024


def cpu_seconds(pids: set[int]) -> dict[int, float]:
    """User+system CPU seconds used so far, per process."""
    tick = os.sysconf("SC_CLK_TCK")
    used = {}
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        used[pid] = (int(fields[11]) + int(fields[12])) / tick
    return used


class PeakMemory:
    """Samples the summed memory of a process set every 0.5 s while a load runs."""

    def __init__(self, pids: Callable[[], set[int]]) -> None:
        self.pids, self.peak = pids, (0.0, 0.0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            rss, pss = memory_mib(self.pids())
            self.peak = (max(self.peak[0], rss), max(self.peak[1], pss))

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def load(server: Server, images: list[bytes], args: argparse.Namespace,
         pids: Callable[[], set[int]]) -> dict[str, Any]:
    cap = 2 * CLIENTS if args.smoke else None
    asyncio.run(run_load(server, images, clients=4, per_request=1, duration_s=600,
                         max_requests=8))  # warm-up
    cpu_before = cpu_seconds(pids())
    with PeakMemory(pids) as peak:
        result: Result = asyncio.run(run_load(server, images, clients=CLIENTS, per_request=1,
                                              duration_s=args.duration, max_requests=cap))
    cpu_after = cpu_seconds(pids())
    # CPU the server spent per image: a figure other load on the machine barely moves.
    cpu = sum(v - cpu_before.get(pid, 0.0) for pid, v in cpu_after.items())
    return {"result": result, "memory": peak.peak, "load": os.getloadavg()[0],
            "cpu_ms_per_image": 1000 * cpu / max(1, result.images)}


def single(model_dir: Path, images: list[bytes], args: argparse.Namespace,
           logs: Path) -> dict[str, Any]:
    with safegen_server(model_dir, args.cache_dir, "auto", "auto", logs / "single.log") as srv:
        return load(srv, images, args, lambda: process_tree(srv.process.pid))


def on_ray(model_dir: Path, images: list[bytes], args: argparse.Namespace,
           replicas: int) -> dict[str, Any]:
    from safegen.ray_serve.local import shutdown, start_local_ray

    temp_dir = start_local_ray(num_cpus=2 * (os.cpu_count() or 1),
                               object_store_bytes=200 * 1024 * 1024)
    try:
        from ray import serve

        from safegen.ray_serve.config import RayServeConfig
        from safegen.ray_serve.deployments import build_application
        from safegen.settings import Settings

        key = "bench-" + os.urandom(12).hex()
        settings = Settings(nsfw_model=str(model_dir), model_cache_dir=args.cache_dir,
                            api_keys=[key], rate_limit="", log_level="warning",
                            decode_threads=2 if replicas == 1 else 1,
                            result_cache_size=0)  # repeated payloads: no cache hits
        # Ray sets OMP_NUM_THREADS to a replica's num_cpus, so num_cpus is also torch's threads.
        cores = max(1, (os.cpu_count() or 1) // replicas)
        config = RayServeConfig(classifier={"num_replicas": replicas, "num_cpus": cores},
                                ingress={"num_replicas": 1, "num_cpus": 0.5})
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_application(settings, config), name="safegen", route_prefix="/")
        url = f"http://127.0.0.1:{port}"
        # No server process of its own: loadgen's per-process figures then describe this driver,
        # and this script measures the Ray processes itself.
        server = Server(f"ray-{replicas}", url, SimpleNamespace(pid=os.getpid()),  # type: ignore[arg-type]
                        headers={"Authorization": f"Bearer {key}"})
        me = os.getpid()
        return load(server, images, args, lambda: process_tree(me, temp_dir) - {me})
    finally:
        shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache/safegen/bench")
    parser.add_argument("--torch-threads", type=int, default=0,
                        help="SAFEGEN_TORCH_THREADS for every server (0: torch's default, which "
                        "Ray replicas set to their num_cpus)")
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args(argv)
    if args.torch_threads:
        os.environ["SAFEGEN_TORCH_THREADS"] = str(args.torch_threads)  # read by both paths
    if args.smoke:
        args.duration = 1.0
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    model_dir = prepare_model(args.cache_dir, args.smoke)
    images = make_images(8 if args.smoke else 48)
    runs = {}
    with tempfile.TemporaryDirectory(prefix="safegen-bench-") as logs:
        runs["single process"] = single(model_dir, images, args, Path(logs))
        runs["ray, 1 classifier replica"] = on_ray(model_dir, images, args, 1)
        runs["ray, 2 classifier replicas"] = on_ray(model_dir, images, args, 2)
    base = runs["single process"]["result"].rate
    threads = args.torch_threads or "default"
    print(f"cpu cores: {os.cpu_count()}; {CLIENTS} clients x 1 image; {args.duration:.0f} s each; "
          f"torch threads: {threads}")
    print(f"{'path':<28}{'img/s':>8}{'ratio':>7}{'p50 ms':>8}{'p95 ms':>8}{'errors':>7}"
          f"{'CPU ms/img':>11}{'RSS MiB':>9}{'PSS MiB':>9}{'load':>6}")
    for name, run in runs.items():
        res: Result = run["result"]
        rss, pss = run["memory"]
        print(f"{name:<28}{res.rate:>8.2f}{res.rate / base:>6.2f}x"
              f"{res.percentile(0.5) * 1000:>8.0f}{res.percentile(0.95) * 1000:>8.0f}"
              f"{res.errors:>7}{run['cpu_ms_per_image']:>11.0f}{rss:>9.0f}{pss:>9.0f}"
              f"{run['load']:>6.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

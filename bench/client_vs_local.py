"""Side-by-side: ``safegen classify --server`` (the Python client against a real server) against
``safegen classify`` with the local engine, on the same folder of the benchmark's 512x1024 JPEGs
and the same model directory (ViT-B/16 shape, random weights). Each side is the real CLI in a
subprocess, timed from start to exit (model loading included for the local side, since that is
what a user of the command waits for), and once more with the model already loaded: for the
server side the server is running; for the local side the load time is taken off, as measured
by running the command on one image.

    python bench/client_vs_local.py --images 96
    python bench/client_vs_local.py --smoke      # tiny model, seconds
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "src"), str(REPO), str(REPO / "bench")]

from loadgen import safegen_server  # noqa: E402  (after the path set-up above)


def cli(args: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "safegen", "classify", *args, "--quiet"], env=env,
                   check=False, stdout=subprocess.DEVNULL, timeout=3600)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--smoke", action="store_true", help="tiny model, 16 images")
    args = parser.parse_args()
    from tests.support import images
    from tests.support.tiny_models import build_full_vit_b16, build_tiny_vit_classifier

    count = 16 if args.smoke else args.images
    with tempfile.TemporaryDirectory(prefix="safegen-bench-") as tmp:
        root = Path(tmp)
        model = (build_tiny_vit_classifier if args.smoke else build_full_vit_b16)(root / "model")
        folder = root / "pics"
        folder.mkdir()
        for i in range(count):
            (folder / f"{i:04d}.jpg").write_bytes(images.jpeg(i))
        one = root / "one"
        one.mkdir()
        (one / "0.jpg").write_bytes(images.jpeg(0))
        env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "SAFEGEN_NSFW_MODEL": str(model),
               "SAFEGEN_INFERENCE_TIMEOUT_S": "600",  # as the server side: busy, not stuck
               "SAFEGEN_RESULT_CACHE_SIZE": "0"}  # the model does the work, not the cache
        # A host's first start times the inference paths (`auto`) and caches the choice: warm
        # that cache first, or the one-image run would count it as per-command start-up.
        cli([str(one)], env)
        local_one = cli([str(one)], env)
        local_all = cli([str(folder)], env)
        with safegen_server(model, root / "cache", "auto", "auto", root / "server.log") as server:
            remote_env = {**env, "SAFEGEN_API_KEY": server.headers["Authorization"][7:]}
            remote_all = cli([str(folder), "--server", server.url], remote_env)
    work_s = local_all - local_one  # start-up and load taken off
    local_rate = (count - 1) / work_s if work_s > 0 else float("nan")
    remote_rate = count / remote_all
    print(f"images: {count} (512x1024 JPEG), host CPUs: {os.cpu_count()}")
    print(f"local engine, whole command:    {local_all:7.2f} s  {count / local_all:6.2f} img/s")
    print(f"local engine, minus start-up:   {local_rate:16.2f} img/s")
    print(f"--server (client + warm server): {remote_all:6.2f} s  {remote_rate:6.2f} img/s")
    print(f"ratio --server / local minus start-up: {remote_rate / local_rate:.2f}")


if __name__ == "__main__":
    main()

"""What ``auto`` chooses here for ViT-B/16, and each path's speed as a fraction of the ceiling.

Runs the start-up measurement (``moderation/path_choice.py``) afresh on the full-size model (its
cached choice is set aside; exports stay cached), then ``cpu_ceiling.py``'s GEMM ceiling in the
same process, and prints every path's raw forward rate beside the host's ceiling. Run from the
repository root (the first run builds the model directory and the exports):

    python bench/auto_choice.py --max-batch-size 32
    python bench/auto_choice.py --max-drift 5e-2      # int8 paths compete too
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "src"), str(REPO), str(REPO / "bench")]

from classify_throughput import prepare_model  # noqa: E402
from cpu_ceiling import best, ceilings  # noqa: E402
from safegen.moderation.backends import artifact_cache  # noqa: E402
from safegen.moderation.loading import load_classifier  # noqa: E402
from safegen.moderation.path_choice import PathRequest, choose  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache/safegen/bench")
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--max-drift", type=float, default=1e-2)
    parser.add_argument("--smoke", action="store_true", help="tiny model")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    model_dir = prepare_model(args.cache_dir, args.smoke)
    shutil.rmtree(artifact_cache.cache_root(args.cache_dir, "choices"), ignore_errors=True)
    loaded = load_classifier(str(model_dir), args.cache_dir)
    _, choice = choose(loaded, PathRequest(
        backend="auto", precision="auto", device="auto", cache_dir=args.cache_dir,
        max_drift=args.max_drift, max_batch_size=args.max_batch_size, tune_batch_size=True,
    ))
    host = ceilings(batch=1 if args.smoke else 16, repeats=1 if args.smoke else 3)
    print(f"auto chose {choice.path}, batch cap {choice.batch_size}, in {choice.seconds:.0f} s")
    print(f"{'path':<16}{'img/s':>9}{'ceiling':>9}{'of ceiling':>12}"
          f"   (batch {choice.probe_batch})")
    for path, rate in choice.path_rates.items():
        _, ceiling = best(host, "int8" if path.endswith("int8") else "float")
        print(f"{path:<16}{rate:>9.2f}{ceiling:>9.2f}{rate / ceiling:>12.0%}")
    print(f"{choice.path} by batch size: "
          + ", ".join(f"{b}: {r:.2f}" for b, r in sorted(choice.batch_rates.items())))
    for kind in ("float", "int8"):
        kernel, ceiling = best(host, kind)
        print(f"host ceiling, {kind}: {ceiling:.2f} img/s ({kernel})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

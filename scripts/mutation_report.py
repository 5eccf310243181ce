"""Mutation score per module from mutmut's results (run after ``mutmut run``; ``make mutation``).

Score = killed / (killed + survived + no tests): a mutant no test reaches counts against the
module like a survivor. Timeouts count as killed (the mutant broke the code so it never answered).
``--survivors`` lists every surviving mutant's name, for ``mutmut show NAME``.

Where only some of a module's mutants have run, the last column is the 95% (Wilson) interval of
the whole module's score. It holds for a random sample (``mutation_sample.py``), not for a run
stopped early, which has scored the mutants with the quickest tests.
"""

from __future__ import annotations

import argparse
import math
import re
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

KILLED = {"killed", "timeout"}
COUNTED = KILLED | {"survived", "no tests"}
GOAL = 0.90
# "safegen.delivery.uploader.xǁUploaderǁupload__mutmut_3" -> "safegen.delivery.uploader"
MODULE = re.compile(r"^(?P<module>[\w.]+?)\.x(?:_|ǁ)")


def results(mutmut: str) -> dict[str, str]:
    out = subprocess.run([mutmut, "results", "--all", "true"], capture_output=True, text=True,
                         check=True).stdout
    statuses = {}
    for line in out.splitlines():
        name, _, status = line.strip().rpartition(": ")
        if name:
            statuses[name] = status
    return statuses


def module_of(name: str) -> str:
    """The module a mutant belongs to, from its name."""
    match = MODULE.match(name)
    return match["module"] if match else name


def wilson_interval(killed: int, total: int, z: float = 1.96) -> tuple[float, float]:
    """The interval that holds a proportion with 95% confidence, from ``killed`` of ``total``
    drawn at random (Wilson's score interval: sound at small samples and at 0% or 100%)."""
    share = killed / total
    centre = (share + z * z / (2 * total)) / (1 + z * z / total)
    spread = z / (1 + z * z / total) * math.sqrt(share * (1 - share) / total
                                                 + z * z / (4 * total * total))
    return max(0.0, centre - spread), min(1.0, centre + spread)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mutmut", default=str(Path(sys.executable).with_name("mutmut")))
    parser.add_argument("--survivors", action="store_true", help="list surviving mutants")
    args = parser.parse_args()
    by_module: dict[str, Counter[str]] = defaultdict(Counter)
    survivors: dict[str, list[str]] = defaultdict(list)
    for name, status in results(args.mutmut).items():
        module = module_of(name)
        by_module[module][status] += 1
        if status in {"survived", "no tests"}:
            survivors[module].append(name)
    print(f"{'module':46} {'mutants':>7} {'killed':>6} {'survived':>8} {'no tests':>8}"
          f" {'not run':>7} {'score':>6} {'95% interval':>13}")
    below = 0
    for module in sorted(by_module):
        counts = by_module[module]
        total = sum(counts[s] for s in COUNTED)
        killed = sum(counts[s] for s in KILLED)
        not_run = sum(counts.values()) - total
        if not total:
            print(f"{module:46} {total:7} {'':6} {'':8} {'':8} {not_run:7}      -")
            continue
        score = killed / total
        below += score < GOAL
        low, high = wilson_interval(killed, total)
        interval = f"{low:.1%}-{high:.1%}" if not_run else ""
        print(f"{module:46} {total:7} {killed:6} {counts['survived']:8} {counts['no tests']:8} "
              f"{not_run:7} {score:6.1%} {interval:>13}{'' if score >= GOAL else '  < 90%'}")
        if args.survivors:
            for name in survivors[module]:
                print(f"    {name}")
    return 1 if below else 0


if __name__ == "__main__":
    sys.exit(main())

"""Draw a seeded random sample of mutants, the same number from each module, for ``mutmut run``.

A whole run takes most of a day on 2 cores, and a run stopped early has scored the mutants
whose tests are quickest: the cheap part of each module. A uniform random sample instead
estimates each whole module's score (``mutation_report.py`` prints it with a 95% interval).
``make mutation-sample`` runs one. The mutants must exist (mutmut writes them on its first run).
"""

from __future__ import annotations

import argparse
import random
import sys
from collections import defaultdict
from pathlib import Path

from mutation_report import module_of, results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--per-module", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--skip", type=int, default=0,
                        help="leave out the first SKIP of each module's draw: those an earlier "
                             "run with the same seed scored (on another machine, say)")
    parser.add_argument("--mutmut", default=str(Path(sys.executable).with_name("mutmut")))
    args = parser.parse_args()
    by_module: dict[str, list[str]] = defaultdict(list)
    for name in results(args.mutmut):
        by_module[module_of(name)].append(name)
    if not by_module:
        print("no mutants yet: run mutmut once first", file=sys.stderr)
        return 1
    for module in sorted(by_module):
        # Each module shuffled by its own generator, seeded with the seed and the module's name:
        # the draw does not depend on file order or on the other modules, and a larger sample
        # with the same seed holds the smaller one (a later run continues an earlier one).
        names = sorted(by_module[module])
        random.Random(f"{args.seed}:{module}").shuffle(names)
        print("\n".join(names[args.skip : args.per_module]))
    return 0


if __name__ == "__main__":
    sys.exit(main())

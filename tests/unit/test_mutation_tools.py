"""The mutation-testing tools: the sampler's seeded draw, the report's scores and intervals.

Both read ``mutmut results --all true``; a stand-in executable prints that listing.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPTS = Path(__file__).parents[2] / "scripts"


def listing(tmp_path: Path, statuses: dict[str, str]) -> Path:
    """An executable that answers like ``mutmut results --all true`` with ``statuses``."""
    lines = "".join(f"    {name}: {status}\n" for name, status in statuses.items())
    mutmut = tmp_path / "mutmut"
    mutmut.write_text(f"#!/bin/sh\ncat <<'END'\n{lines}END\n")
    mutmut.chmod(0o755)
    return mutmut


def run(script: str, mutmut: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPTS / script), "--mutmut", str(mutmut), *args],
                          capture_output=True, text=True, check=False)


def test_the_sample_is_seeded_per_module_and_a_larger_one_holds_a_smaller(tmp_path: Path) -> None:
    names = [f"safegen.big.x_f__mutmut_{i}" for i in range(1, 31)]
    names += [f"safegen.small.xǁCǁm__mutmut_{i}" for i in range(1, 6)]
    mutmut = listing(tmp_path, dict.fromkeys(names, "not checked"))

    def draw(per_module: int, seed: int, mutmut: Path = mutmut, *more: str) -> list[str]:
        out = run("mutation_sample.py", mutmut, "--per-module", str(per_module),
                  "--seed", str(seed), *more)
        assert out.returncode == 0, out.stderr
        return out.stdout.split()

    ten = draw(10, 1)
    assert len(ten) == 15  # 10 of the 30, all 5 of the small module
    assert sum(name.startswith("safegen.big.") for name in ten) == 10
    assert {name for name in ten if name.startswith("safegen.small.")} == set(names[30:])
    assert draw(10, 1) == ten
    twenty = draw(20, 1)
    assert set(ten) < set(twenty)
    # --skip leaves out what the smaller draw scored: the two together are the larger draw.
    rest = draw(20, 1, mutmut, "--skip", "10")
    assert len(rest) == 10
    assert sorted(ten + rest) == sorted(twenty)
    assert draw(10, 2) != ten
    # Neither the order of the listing nor another module's mutants change a module's draw.
    (tmp_path / "other").mkdir()
    others = [f"safegen.another.x_f__mutmut_{i}" for i in range(1, 31)]
    reordered = listing(tmp_path / "other", dict.fromkeys(others + names[::-1], "not checked"))
    assert set(ten) < set(draw(10, 1, reordered))


def test_the_sample_needs_mutants(tmp_path: Path) -> None:
    out = run("mutation_sample.py", listing(tmp_path, {}))
    assert (out.returncode, out.stdout) == (1, "")
    assert "run mutmut once first" in out.stderr


def test_the_report_scores_each_module_and_flags_those_below_90(tmp_path: Path) -> None:
    statuses = {f"safegen.sampled.x_f__mutmut_{i}": "killed" for i in range(1, 19)}
    statuses["safegen.sampled.x_f__mutmut_19"] = "timeout"  # the mutant hung: killed
    statuses["safegen.sampled.x_f__mutmut_20"] = "survived"
    statuses.update({f"safegen.sampled.x_g__mutmut_{i}": "not checked" for i in range(1, 11)})
    statuses.update({f"safegen.whole.xǁCǁm__mutmut_{i}": "killed" for i in range(1, 9)})
    statuses.update({f"safegen.whole.xǁCǁm__mutmut_{i}": "no tests" for i in (9, 10)})
    out = run("mutation_report.py", listing(tmp_path, statuses), "--survivors")
    assert out.returncode == 1  # a module is below 90%
    rows = {line.split()[0]: line.split() for line in out.stdout.splitlines()[1:]
            if line.startswith("safegen.")}
    # 19 of 20 killed, 10 not run: the score of a sample, with its 95% Wilson interval.
    assert rows["safegen.sampled"] == ["safegen.sampled", "20", "19", "1", "0", "10", "95.0%",
                                       "76.4%-99.1%"]
    # Every mutant run: an exact score, no interval; unreached mutants count as survivors.
    assert rows["safegen.whole"] == ["safegen.whole", "10", "8", "0", "2", "0", "80.0%", "<",
                                     "90%"]
    assert "    safegen.sampled.x_f__mutmut_20" in out.stdout.splitlines()

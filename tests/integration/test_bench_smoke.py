"""The side-by-side classification benchmark runs end to end (tiny model, a few requests).

No timing assertions: this only proves that both real servers start, serve the same load and
that the table with the safegen/baseline ratio comes out.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from safegen.moderation.backends.spec import cpu_has_native_bf16

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow  # two real server processes: about 20-40 s on 2 cores
def test_classify_benchmark_smoke(tmp_path):
    backend = "onnx"  # the path with the most moving parts: export, cache, onnxruntime
    completed = subprocess.run(
        [sys.executable, str(REPO / "bench" / "classify_throughput.py"), "--smoke",
         "--backend", backend, "--precision", "fp32", "--cache-dir", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=240,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    table = completed.stdout
    assert f"safegen path: {backend}-fp32" in table
    # both scenarios: a safegen row with images/s, the batch size it formed and a ratio
    row = r"^\s+safegen\s+([0-9.]+)\s+\d+\s+\d+\s+([0-9.]+)\s+0\s+([0-9.]+)x\s+\S+\s+[0-9.]+$"
    rows = re.findall(row, table, re.MULTILINE)
    assert len(rows) == 2, table
    assert all(float(rate) > 0 and float(ratio) > 0 for rate, _, ratio in rows), table
    assert re.search(r"e2e = \d+% of raw", table), table
    assert re.search(r"idle lone request p50 safegen .* raw batch-1 forward", table), table


def test_cpu_ceiling_smoke():
    """The ceiling benchmark prints a positive GEMM rate and ceiling for every CPU path."""
    completed = subprocess.run(
        [sys.executable, str(REPO / "bench" / "cpu_ceiling.py"), "--batch", "1", "--repeats", "1",
         "--naive", "3.0"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    rows = re.findall(r"^(\S+)\s+([0-9.]+)\s+([0-9.]+)\s+([0-9.]+)x$", completed.stdout,
                      re.MULTILINE)
    expected = ["torch-fp32", "onnx-fp32", "onnx-int8", "openvino-fp32", "openvino-int8"]
    if cpu_has_native_bf16():  # bf16 rows only where bf16 is not an emulation
        expected += ["torch-bf16", "openvino-bf16"]
    assert sorted(name for name, *_ in rows) == sorted(expected), completed.stdout
    assert all(float(rate) > 0 and float(ceiling) > 0 for _, rate, ceiling, _ in rows), rows
    for kind in ("float", "int8"):  # the host's ceiling: the best kernel of each kind
        best = max(float(c) for name, _, c, _ in rows if name.endswith("int8") == (kind == "int8"))
        # the table prints rates rounded to 3 decimals, the summary to 2: allow one unit
        printed = re.search(rf"^host ceiling, {kind}: ([0-9.]+) img/s", completed.stdout,
                            re.MULTILINE)
        assert printed, completed.stdout
        assert float(printed.group(1)) == pytest.approx(best, abs=0.011), completed.stdout

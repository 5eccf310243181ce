"""The most images/s this CPU can give the classifier on each path: its linear layers alone.

ViT-B/16 spends 95% of its FLOPs and 75% of a bf16 forward's time in the matrix multiplies
of its linear layers (torch profiler, docs/performance.md). This times those multiplies in
isolation, at the model's own shapes (``--batch`` images of 197 tokens), with the kernels each path
uses: torch fp32 and bf16 matmul, onnxruntime's fp32 ``MatMul`` and its ``MatMulInteger`` (uint8 x
int8, the kernel of dynamic int8 quantisation), and OpenVINO's CPU plugin ``MatMul`` in f32, bf16
and int8 (a ``FakeQuantize``d activation times int8 weights: what NNCF's quantised model runs).
Images/s with nothing but those multiplies is a ceiling no server on this machine can pass on that
path; the best row of a precision class ("float": fp32 and bf16, the paths within the default
drift limit; "int8") is the ceiling of the host, whatever the path. ``--naive`` turns it into a
multiple of a baseline's rate.
No model is needed: the shapes come from ``transformers.ViTConfig()``'s defaults (ViT-B/16).

    python bench/cpu_ceiling.py --naive 3.3
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
from safegen.moderation.backends.spec import cpu_has_native_bf16  # noqa: E402


def vit_b16_linear_layers() -> tuple[int, list[tuple[int, int, int]]]:
    """Tokens per image, and ``(count, in, out)`` per linear layer kind of one ViT-B/16 forward."""
    from transformers import ViTConfig

    cfg = ViTConfig()
    tokens = (cfg.image_size // cfg.patch_size) ** 2 + 1  # patches and the class token
    hidden, inner, layers = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    # query, key, value and attention output are hidden x hidden; then the two MLP layers
    return tokens, [(4 * layers, hidden, hidden), (layers, hidden, inner), (layers, inner, hidden)]


def seconds_per_call(run: Callable[[], object], repeats: int) -> float:
    run()  # warm-up: kernel selection, weight packing, allocator
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def torch_matmul(dtype: torch.dtype) -> Callable[[int, int, int], Callable[[], object]]:
    def make(rows: int, k: int, n: int) -> Callable[[], object]:
        a, b = torch.randn(rows, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
        return lambda: torch.mm(a, b)

    return make


def onnx_matmul(integer: bool, threads: int) -> Callable[[int, int, int], Callable[[], object]]:
    """onnxruntime's fp32 ``MatMul``, or ``MatMulInteger`` (uint8 x int8) when ``integer``."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    def make(rows: int, k: int, n: int) -> Callable[[], object]:
        rng = np.random.default_rng(0)
        if integer:
            op, a_type, y_type = "MatMulInteger", TensorProto.UINT8, TensorProto.INT32
            weight = rng.integers(-128, 128, (k, n), dtype=np.int8)
            a = rng.integers(0, 256, (rows, k), dtype=np.uint8)
            w_type = TensorProto.INT8
        else:
            op, a_type, y_type = "MatMul", TensorProto.FLOAT, TensorProto.FLOAT
            weight = rng.standard_normal((k, n), dtype=np.float32)
            a = rng.standard_normal((rows, k), dtype=np.float32)
            w_type = TensorProto.FLOAT
        graph = helper.make_graph(
            [helper.make_node(op, ["a", "w"], ["y"])], "gemm",
            [helper.make_tensor_value_info("a", a_type, [rows, k])],
            [helper.make_tensor_value_info("y", y_type, [rows, n])],
            [helper.make_tensor("w", w_type, [k, n], weight.tobytes(), raw=True)],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8  # what every onnxruntime release reads
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        session = ort.InferenceSession(model.SerializeToString(), options,
                                       providers=["CPUExecutionProvider"])
        return lambda: session.run(None, {"a": a})

    return make


def openvino_matmul(
    precision: str, threads: int
) -> Callable[[int, int, int], Callable[[], object]]:
    """OpenVINO's CPU ``MatMul``: f32 or bf16 (the inference precision hint), or int8: the
    activation through a ``FakeQuantize`` and int8 weights with a per-channel scale, the pattern
    the CPU plugin's low-precision transformations turn into an int8 GEMM."""
    sys.modules.setdefault("openvino_telemetry", None)  # type: ignore[arg-type]
    import openvino as ov
    import openvino.opset13 as ops

    core = ov.Core()
    hint = "bf16" if precision == "bf16" else "f32"

    def make(rows: int, k: int, n: int) -> Callable[[], object]:
        rng = np.random.default_rng(0)
        a = ops.parameter([rows, k], ov.Type.f32)
        if precision == "int8":
            low, high = ops.constant(np.float32(-4.0)), ops.constant(np.float32(4.0))
            quantised = ops.fake_quantize(a, low, high, low, high, 256)
            codes = ops.constant(rng.integers(-127, 128, (k, n), dtype=np.int8))
            scale = ops.constant(np.full((1, n), 0.01, np.float32))
            weight = ops.multiply(ops.convert(codes, ov.Type.f32), scale)
            product = ops.matmul(quantised, weight, False, False)
        else:
            weight = ops.constant(rng.standard_normal((k, n), dtype=np.float32))
            product = ops.matmul(a, weight, False, False)
        compiled = core.compile_model(ov.Model([product], [a]), "CPU", {
            "INFERENCE_PRECISION_HINT": hint, "INFERENCE_NUM_THREADS": threads,
            "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY",
        })
        request = compiled.create_infer_request()
        x = rng.standard_normal((rows, k), dtype=np.float32)
        return lambda: request.infer({0: x}, share_inputs=True)

    return make


def kernels(threads: int) -> dict[str, Callable[[int, int, int], Callable[[], object]]]:
    """Every GEMM kernel installed here, by the path name that uses it."""
    # Without native bf16 the bf16 rows would time an emulation (torch: ~50x slower than fp32
    # here, minutes per row) or OpenVINO's silent fallback to f32: neither is a ceiling.
    bf16 = cpu_has_native_bf16()
    paths: dict[str, Callable[[int, int, int], Callable[[], object]]] = {
        "torch-fp32": torch_matmul(torch.float32),
    }
    if bf16:
        paths["torch-bf16"] = torch_matmul(torch.bfloat16)
    if importlib.util.find_spec("onnxruntime") and importlib.util.find_spec("onnx"):
        paths["onnx-fp32"] = onnx_matmul(integer=False, threads=threads)
        paths["onnx-int8"] = onnx_matmul(integer=True, threads=threads)
    if importlib.util.find_spec("openvino"):
        for precision in ("fp32", "bf16", "int8") if bf16 else ("fp32", "int8"):
            paths[f"openvino-{precision}"] = openvino_matmul(precision, threads)
    return paths


def ceilings(batch: int = 16, repeats: int = 5) -> dict[str, float]:
    """Images/s the linear layers alone allow, per path, at ``batch`` images per forward."""
    tokens, shapes = vit_b16_linear_layers()
    rows = batch * tokens
    found = {}
    for name, make in kernels(torch.get_num_threads()).items():
        seconds = sum(
            count * seconds_per_call(make(rows, k, n), repeats) for count, k, n in shapes
        ) / batch
        found[name] = 1 / seconds
    return found


def best(found: dict[str, float], kind: str) -> tuple[str, float]:
    """The host's ceiling for ``kind`` (``float``: fp32 or bf16; ``int8``): the best kernel."""
    rows = {p: r for p, r in found.items() if p.endswith("-int8") == (kind == "int8")}
    name = max(rows, key=lambda p: rows[p])
    return name, rows[name]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=16, help="images per forward")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--naive", type=float, help="the baseline's images/s, for the multiple")
    args = parser.parse_args()

    tokens, shapes = vit_b16_linear_layers()
    flops_per_image = sum(2 * tokens * count * k * n for count, k, n in shapes)
    if not importlib.util.find_spec("onnxruntime"):
        print("onnxruntime not installed: no onnx rows")
    if not importlib.util.find_spec("openvino"):
        print("openvino not installed: no openvino rows")
    if not cpu_has_native_bf16():
        print("no native bf16 on this CPU (AVX-512 BF16 or AMX): no bf16 rows")
    print(f"ViT-B/16 linear layers: {flops_per_image / 1e9:.1f} GFLOP per image; "
          f"batch {args.batch} ({args.batch * tokens} rows); {torch.get_num_threads()} threads")
    print(f"{'path':<15} {'GEMM GFLOP/s':>13} {'ceiling img/s':>14} {'ceiling / naive':>16}")
    found = ceilings(args.batch, args.repeats)
    for name, ceiling in found.items():
        multiple = f"{ceiling / args.naive:.2f}x" if args.naive else "-"
        print(f"{name:<15} {flops_per_image * ceiling / 1e9:>13.1f} {ceiling:>14.3f} "
              f"{multiple:>16}")
    for kind in ("float", "int8"):
        name, ceiling = best(found, kind)
        print(f"host ceiling, {kind}: {ceiling:.2f} img/s ({name})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The most images/s this CPU can give the classifier on each path: its linear layers alone.

ViT-B/16 spends 95% of its FLOPs and 75% of a bf16 forward's time in the matrix multiplies
of its linear layers (torch profiler, docs/performance.md). This times those multiplies in
isolation, at the model's own shapes (``--batch`` images of 197 tokens), with the kernels each path
uses: torch fp32 and bf16 matmul, onnxruntime's fp32 ``MatMul`` and its ``MatMulInteger`` (uint8 x
int8, the kernel of dynamic int8 quantisation). Images/s with nothing but those multiplies is a
ceiling no server on this machine can pass on that path; ``--naive`` turns it into a multiple of a
baseline's rate.
No model is needed: the shapes come from ``transformers.ViTConfig()``'s defaults (ViT-B/16).

    python bench/cpu_ceiling.py --naive 3.3
"""

from __future__ import annotations

import argparse
import importlib.util
import time
from collections.abc import Callable

import numpy as np
import torch


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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=16, help="images per forward")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--naive", type=float, help="the baseline's images/s, for the multiple")
    args = parser.parse_args()

    tokens, shapes = vit_b16_linear_layers()
    rows = args.batch * tokens
    flops_per_image = sum(2 * tokens * count * k * n for count, k, n in shapes)
    paths: dict[str, Callable[[int, int, int], Callable[[], object]]] = {
        "torch-fp32": torch_matmul(torch.float32),
        "torch-bf16": torch_matmul(torch.bfloat16),
    }
    if importlib.util.find_spec("onnxruntime") and importlib.util.find_spec("onnx"):
        paths["onnx-fp32"] = onnx_matmul(integer=False, threads=torch.get_num_threads())
        paths["onnx-int8"] = onnx_matmul(integer=True, threads=torch.get_num_threads())
    else:
        print("onnxruntime not installed: no onnx rows")

    print(f"ViT-B/16 linear layers: {flops_per_image / 1e9:.1f} GFLOP per image; "
          f"batch {args.batch} ({rows} rows); {torch.get_num_threads()} threads")
    print(f"{'path':<12} {'GEMM GFLOP/s':>13} {'ceiling img/s':>14} {'ceiling / naive':>16}")
    for name, make in paths.items():
        seconds = sum(
            count * seconds_per_call(make(rows, k, n), args.repeats) for count, k, n in shapes
        ) / args.batch
        ceiling = 1 / seconds
        multiple = f"{ceiling / args.naive:.2f}x" if args.naive else "-"
        print(f"{name:<12} {flops_per_image / seconds / 1e9:>13.0f} {ceiling:>14.2f} "
              f"{multiple:>16}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

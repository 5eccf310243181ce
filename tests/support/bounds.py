"""The parity bounds docs/performance.md ("Inference paths") and the README state: max |delta p|
of each inference path against torch fp32. Kept here, not read from the code, so that loosening
a constant in the code fails the tests instead of loosening them."""

DOCUMENTED_BOUNDS = {
    "torch-fp32": 1e-4, "torch-bf16": 1e-2, "torch-fp16": 5e-3,
    "onnx-fp32": 1e-4, "onnx-fp16": 5e-3, "onnx-int8": 5e-2,
    "openvino-fp32": 1e-4, "openvino-bf16": 1e-2, "openvino-int8": 0.3,
}

"""The CPU execution provider target (the default): int8 QDQ fusion rules, opset range, emission.

ORT's CPU EP loads every opset this onnx writes and runs Q/DQ it cannot fuse in float, so it needs
no legalization: its pipelines are the plain -O levels, and `--quantize int8` means uint8
asymmetric activations with int8 symmetric per-channel weights and int32 biases.
"""

from __future__ import annotations

from onnxpress.backends._target import OrtBackend
from onnxpress.backends.base import Capabilities, register_backend
from onnxpress.passes.quantize import quantize_fragment

# ONNX Runtime's CPU EP turns these QDQ units into integer kernels (../shared/REFERENCES.md).
_CPU_QDQ_OPS = frozenset(
    {
        "Conv", "ConvTranspose", "Gemm", "MatMul", "Add", "Mul", "Concat", "AveragePool",
        "GlobalAveragePool", "MaxPool", "Resize", "Softmax", "LeakyRelu", "Sigmoid", "Where",
        "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Gather", "Slice", "Split",
    }
)


class CpuBackend(OrtBackend):
    name = "cpu"
    capabilities = Capabilities(
        target="cpu", providers=("CPUExecutionProvider",), qdq_ops=_CPU_QDQ_OPS, opset_range=(7, 26),
    )
    quantize_fragments = {kind: quantize_fragment(kind, True) for kind in ("int8", "int4", "fp16", "dynamic")}
    quantize_refusals = {"int16": "the CPU EP has no 16-bit integer kernels (16-bit Q/DQ would run in float)"}

    def prelude(self) -> str:
        return ""

    def tail(self) -> str:
        return ""


register_backend(CpuBackend)

"""The CPU execution provider target (the default): int8 QDQ fusion rules, opset range, emission."""

from __future__ import annotations

import onnx_ir as ir

from onnxpress.backends.base import Capabilities, register_backend
from onnxpress.backends.ort import OrtRunner

# ONNX Runtime's CPU EP turns these QDQ units into integer kernels (../shared/REFERENCES.md).
_CPU_QDQ_OPS = frozenset(
    {
        "Conv", "ConvTranspose", "Gemm", "MatMul", "Add", "Mul", "Concat", "AveragePool",
        "GlobalAveragePool", "MaxPool", "Resize", "Softmax", "LeakyRelu", "Sigmoid", "Where",
        "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Gather", "Slice", "Split",
    }
)


class CpuBackend:
    name = "cpu"
    capabilities = Capabilities(target="cpu", providers=("CPUExecutionProvider",), qdq_ops=_CPU_QDQ_OPS)

    def runner(self) -> OrtRunner:
        return OrtRunner(self.capabilities.providers)

    def pipeline(self, level: int) -> str:
        return f"O{level}"

    def emit(self, model: ir.Model, path: str, *, external_data: bool | None = None) -> None:
        from onnxpress.ir.io import save

        save(model, path, external_data=external_data)


register_backend(CpuBackend)

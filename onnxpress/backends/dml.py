"""The DirectML execution provider target (any DirectX 12 GPU on Windows): float16 first.

Like CUDA: `--quantize fp16` with fragile ops and IO kept float32; Q/DQ runs unfused, so
pre-quantized models get it stripped and `--quantize int8` is refused. DirectML sessions need
memory patterns off and sequential execution (`placement.py` sets both when it opens one).
"""

from __future__ import annotations

from onnxpress.backends import _quantize as q
from onnxpress.backends._target import OrtBackend
from onnxpress.backends.base import Capabilities, register_backend


class DmlBackend(OrtBackend):
    name = "dml"
    capabilities = Capabilities(
        target="dml",
        providers=("DmlExecutionProvider", "CPUExecutionProvider"),
        qdq_ops=frozenset(),
        activation_dtypes=frozenset(),
        weight_dtypes=frozenset(),
        opset_range=(7, 21),
        prefers_fp16=True,
        missing_ops=frozenset({"ConvInteger", "QLinearAdd", "QLinearMul", "DynamicQuantizeMatMul"}),
    )
    quantize_fragments = {"fp16": q.FP16, "int4": q.INT4_MATMULNBITS}
    quantize_refusals = {"int8": f"the DirectML EP: {q.NO_INT8_ON_GPU}", "dynamic": q.NO_DYNAMIC, "int16": q.NO_16BIT}


register_backend(DmlBackend)

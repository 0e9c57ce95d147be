"""The CUDA execution provider target: float16 is the fast path; Q/DQ runs in float there.

`--quantize fp16` converts compute to float16 with fragile ops (norms, Softmax, Exp/Log/Pow,
large reductions) and the graph's inputs and outputs kept float32. There is no int8 here: the CUDA
EP has no fused QDQ kernels, so `remove-float-qdq` strips Q/DQ from pre-quantized models and
`--quantize int8` is refused with a pointer to `--target tensorrt`.
"""

from __future__ import annotations

from onnxpress.backends import _quantize as q
from onnxpress.backends._target import OrtBackend
from onnxpress.backends.base import Capabilities, register_backend


class CudaBackend(OrtBackend):
    name = "cuda"
    capabilities = Capabilities(
        target="cuda",
        providers=("CUDAExecutionProvider", "CPUExecutionProvider"),
        qdq_ops=frozenset(),
        activation_dtypes=frozenset(),
        weight_dtypes=frozenset(),
        opset_range=(7, 23),
        prefers_fp16=True,
        missing_ops=frozenset({"ConvInteger", "QLinearConv", "QLinearMatMul", "QLinearAdd", "QLinearMul",
                               "DynamicQuantizeMatMul", "MatMulIntegerToFloat"}),
    )
    quantize_fragments = {"fp16": q.FP16, "int4": q.INT4_MATMULNBITS}
    quantize_refusals = {"int8": f"the CUDA EP: {q.NO_INT8_ON_GPU}", "dynamic": q.NO_DYNAMIC, "int16": q.NO_16BIT}


register_backend(CudaBackend)

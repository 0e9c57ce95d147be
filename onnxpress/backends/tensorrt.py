"""The TensorRT execution provider target: explicit int8 quantization, fp16 for the rest.

TensorRT reads Q/DQ as "explicit quantization": int8 symmetric (zero point 0) scales on the
inputs of the layers it should run in int8 (Conv, MatMul/Gemm, pooling, residual Add), weights
per channel, biases left float (it quantizes them itself), no Q/DQ on outputs that only float ops
read, and never an asymmetric Softmax (onnxruntime#14626). The capabilities say exactly that;
`quantize-qdq` reads `symmetric_activations_only` and `float_bias`, and the tail's
`remove-float-qdq` strips the output Q/DQ the CPU-style placement leaves behind
(`output_qdq=False`). Everything not in int8 runs in fp16 through the provider option
`trt_fp16_enable`; the graph itself stays float32 unless `--quantize fp16` is asked for.
"""

from __future__ import annotations

import onnx_ir as ir

from onnxpress.backends import _quantize as q
from onnxpress.backends._target import OrtBackend
from onnxpress.backends.base import Capabilities, register_backend

_TRT_QDQ_OPS = frozenset({
    "Conv", "ConvTranspose", "Gemm", "MatMul", "Add", "Concat", "AveragePool", "GlobalAveragePool",
    "MaxPool", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Slice", "Split", "Gather",
    "Resize",
})


class TensorrtBackend(OrtBackend):
    name = "tensorrt"
    capabilities = Capabilities(
        target="tensorrt",
        providers=("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"),
        qdq_ops=_TRT_QDQ_OPS,
        activation_dtypes=frozenset({"int8"}),
        weight_dtypes=frozenset({"int8"}),
        symmetric_activations_only=True,
        float_bias=True,
        output_qdq=False,
        opset_range=(9, 21),
        prefers_fp16=True,
        missing_ops=frozenset({"ConvInteger", "MatMulInteger", "DynamicQuantizeLinear", "QLinearConv",
                               "QLinearMatMul", "MatMulNBits", "DynamicQuantizeMatMul"}),
        provider_options=(("trt_fp16_enable", "True"),),
    )
    quantize_fragments = {
        "int8": "quantize-qdq{activations=int8 weights=int8 per-channel=true symmetric-activations=true bias=float}",
        "fp16": q.FP16,
    }
    quantize_refusals = {
        "int4": "4-bit weights need TensorRT's own block-quantized DequantizeLinear, not MatMulNBits",
        "dynamic": q.NO_DYNAMIC,
        "int16": q.NO_16BIT,
    }

    def provider_options(self, model: ir.Model | None = None) -> dict[str, str]:
        options = super().provider_options(model)
        if model is not None and any(n.op_type == "QuantizeLinear" for n in model.graph):
            options["trt_int8_enable"] = "True"  # explicit quantization: no calibration table needed
        return options


register_backend(TensorrtBackend)

"""The CoreML execution provider target (Apple Neural Engine / GPU): static shapes, float.

CoreML compiles a partition once per input shape; dynamic dims send nodes back to the CPU EP, so
every graph input needs `--input-shape`. It has no Q/DQ fusion through ONNX Runtime (Q/DQ is
stripped, `--quantize int8` refused); the ML Program format computes in float16 on the Neural
Engine on its own, and `--quantize fp16` also halves the file.
"""

from __future__ import annotations

from onnxpress.backends import _quantize as q
from onnxpress.backends._target import OrtBackend
from onnxpress.backends.base import Capabilities, register_backend


class CoremlBackend(OrtBackend):
    name = "coreml"
    capabilities = Capabilities(
        target="coreml",
        providers=("CoreMLExecutionProvider", "CPUExecutionProvider"),
        qdq_ops=frozenset(),
        activation_dtypes=frozenset(),
        weight_dtypes=frozenset(),
        static_shapes_required=True,
        opset_range=(7, 21),
        missing_ops=frozenset({"Loop", "If", "Scan", "NonZero", "ConvInteger", "MatMulInteger",
                               "DynamicQuantizeLinear", "MatMulNBits"}),
        provider_options=(("ModelFormat", "MLProgram"),),
    )
    quantize_fragments = {"fp16": q.FP16}
    quantize_refusals = {
        "int8": "the CoreML EP runs Q/DQ unfused through ONNX Runtime",
        "int4": "the CoreML EP has no MatMulNBits",
        "dynamic": q.NO_DYNAMIC,
        "int16": q.NO_16BIT,
    }


register_backend(CoremlBackend)

"""The OpenVINO execution provider target (Intel CPU / GPU / NPU).

OpenVINO turns Q/DQ pairs into its FakeQuantize and runs the same units the CPU EP fuses, with
uint8 or int8 activations and int8 per-channel weights, so `--quantize int8` means what it means on
`cpu`. Float16 is a device precision hint (`precision=FP16` on GPU) more than a graph rewrite;
`--quantize fp16` still converts the graph for devices that want it.

Symbolic input dims make the EP compile for dynamic shapes, which costs latency (tools/bench/openvino.py,
1 thread: PP-OCRv4 det 164 -> 140 ms, PP-OCR cls 4.0 -> 3.5 ms with the inputs fixed), so emit warns
about them; `--input-shape` fixes them in the emitted model.
"""

from __future__ import annotations

from onnxpress.backends import _quantize as q
from onnxpress.backends._target import OrtBackend
from onnxpress.backends.base import Capabilities, register_backend
from onnxpress.backends.cpu import CpuBackend


class OpenvinoBackend(OrtBackend):
    name = "openvino"
    capabilities = Capabilities(
        target="openvino",
        providers=("OpenVINOExecutionProvider", "CPUExecutionProvider"),
        qdq_ops=CpuBackend.capabilities.qdq_ops,
        weight_dtypes=frozenset({"int8"}),
        opset_range=(7, 22),
        static_shapes_preferred=True,
        missing_ops=frozenset({"DynamicQuantizeLinear", "MatMulInteger", "ConvInteger", "DynamicQuantizeMatMul"}),
    )
    quantize_fragments = {
        "int8": CpuBackend.quantize_fragments["int8"],
        "int4": "quantize-weights{bits=4 block-size=32}",
        "fp16": q.FP16,
    }
    quantize_refusals = {"dynamic": q.NO_DYNAMIC, "int16": q.NO_16BIT}


register_backend(OpenvinoBackend)

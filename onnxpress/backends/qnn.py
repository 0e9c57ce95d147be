"""The QNN execution provider target (Qualcomm HTP NPU): the whole graph in QDQ, static shapes.

The HTP runs only quantized ops with fixed shapes: a float op or a dynamic dim sends its node back
to the CPU EP (Olive#1552, #1558). So every graph input needs `--input-shape` (`fix-shapes` fails
with the list of symbolic dims otherwise), and `--quantize int8` quantizes every op the placement
has a rule for, uint8 asymmetric activations and uint8 per-tensor weights as ONNX Runtime's own
QNN configuration does; `--quantize int16` uses uint16 activations with uint8 weights (A16W8),
upgrading the opset to 21 (or using com.microsoft Q/DQ below it).
"""

from __future__ import annotations

from onnxpress.backends import _quantize as q
from onnxpress.backends._target import OrtBackend
from onnxpress.backends.base import Capabilities, register_backend
from onnxpress.passes.quantize.placement import RULES

#: everything quantize-qdq has a placement rule for, plus what the HTP runs quantized beyond that
#: (listed so that `remove-float-qdq` keeps Q/DQ a pre-quantized model has around them)
_QNN_QDQ_OPS = frozenset(RULES) | frozenset({
    "Relu", "Clip", "Tanh", "HardSigmoid", "HardSwish", "Gelu", "Sub", "Div", "Pow", "Sqrt", "Exp",
    "ReduceMean", "ReduceMax", "ReduceSum", "LayerNormalization", "InstanceNormalization",
    "BatchNormalization", "Pad", "PRelu", "ArgMax", "Min", "Max", "Abs", "Neg", "Erf", "Log",
    "TopK", "Tile", "Expand", "GridSample", "LRN", "Cast",
})


class QnnBackend(OrtBackend):
    name = "qnn"
    capabilities = Capabilities(
        target="qnn",
        providers=("QNNExecutionProvider", "CPUExecutionProvider"),
        qdq_ops=_QNN_QDQ_OPS,
        activation_dtypes=frozenset({"uint8", "uint16", "int16"}),
        weight_dtypes=frozenset({"uint8", "int8"}),
        per_channel_weights=False,
        sixteen_bit_activations=True,
        whole_graph_quantized=True,
        static_shapes_required=True,
        opset_range=(11, 21),
        missing_ops=frozenset({"NonZero", "Loop", "Scan", "Unique", "DynamicQuantizeLinear", "MatMulInteger",
                               "ConvInteger"}),
        provider_options=(("backend_type", "htp"),),
    )
    quantize_fragments = {
        "int8": "quantize-qdq{activations=uint8 weights=uint8 per-channel=false symmetric-weights=false}",
        "int16": "quantize-qdq{activations=uint16 weights=uint8 per-channel=false symmetric-weights=false}",
        "fp16": q.FP16,
    }
    quantize_refusals = {
        "int4": "the HTP takes 4-bit weights only as its own block encodings, not MatMulNBits",
        "dynamic": q.NO_DYNAMIC,
    }


register_backend(QnnBackend)

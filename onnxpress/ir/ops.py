"""Op metatypes: what kind of computation an ONNX op is, as data.

Passes ask "is this linear?", "does this op move data without computing?", "does it carry
subgraphs?" instead of hard-coding op-type lists. The answer is a table from (domain, op type) to
a frozenset of category names; an op may sit in several categories (Relu is both an activation and
a unary elementwise op). Ops that are not in the table have no categories, which passes must treat
as "unknown, leave alone".
"""

from __future__ import annotations

import logging

import onnx_ir as ir

__all__ = [
    "ACTIVATION",
    "CATEGORIES",
    "CONSTANT",
    "CONTROL_FLOW",
    "DATA_MOVEMENT",
    "ELEMENTWISE_BINARY",
    "ELEMENTWISE_UNARY",
    "LINEAR",
    "NORMALIZATION",
    "POOLING",
    "QUANTIZATION",
    "REDUCTION",
    "SHAPE",
    "has_subgraphs",
    "is_default_domain",
    "is_elementwise",
    "is_linear",
    "metatypes",
    "op_metatypes",
]

logger = logging.getLogger(__name__)

LINEAR = "LINEAR"
ELEMENTWISE_UNARY = "ELEMENTWISE_UNARY"
#: Broadcasting elementwise ops with two or more tensor inputs (Add, Mul, Where, ...).
ELEMENTWISE_BINARY = "ELEMENTWISE_BINARY"
ACTIVATION = "ACTIVATION"
NORMALIZATION = "NORMALIZATION"
POOLING = "POOLING"
DATA_MOVEMENT = "DATA_MOVEMENT"
REDUCTION = "REDUCTION"
SHAPE = "SHAPE"
CONTROL_FLOW = "CONTROL_FLOW"
QUANTIZATION = "QUANTIZATION"
CONSTANT = "CONSTANT"

CATEGORIES = frozenset(
    {
        LINEAR,
        ELEMENTWISE_UNARY,
        ELEMENTWISE_BINARY,
        ACTIVATION,
        NORMALIZATION,
        POOLING,
        DATA_MOVEMENT,
        REDUCTION,
        SHAPE,
        CONTROL_FLOW,
        QUANTIZATION,
        CONSTANT,
    }
)

_DEFAULT_DOMAINS = frozenset({"", "ai.onnx"})


def _table(entries: dict[tuple[str, ...], str]) -> dict[str, set[str]]:
    table: dict[str, set[str]] = {}
    for op_types, category in entries.items():
        for op_type in op_types:
            table.setdefault(op_type, set()).add(category)
    return table


# Default-domain ops. Keep this a plain table: adding an op is adding a name.
_DEFAULT = _table(
    {
        ("Conv", "ConvTranspose", "Gemm", "MatMul", "ConvInteger", "MatMulInteger", "QLinearConv", "QLinearMatMul"): LINEAR,
        (
            "Abs", "Acos", "Acosh", "Asin", "Asinh", "Atan", "Atanh", "BitwiseNot", "Cast", "CastLike", "Ceil",
            "Clip", "Cos", "Cosh", "Erf", "Exp", "Floor", "Identity", "IsInf", "IsNaN", "Log", "Neg", "Not",
            "Reciprocal", "Round", "Sign", "Sin", "Sinh", "Sqrt", "Tan",
            # Elementwise activations are unary elementwise ops too.
            "Celu", "Elu", "Gelu", "HardSigmoid", "HardSwish", "LeakyRelu", "Mish", "Relu", "Selu",
            "Sigmoid", "Softplus", "Softsign", "Swish", "Tanh", "ThresholdedRelu",
        ): ELEMENTWISE_UNARY,
        (
            "Add", "And", "BitShift", "BitwiseAnd", "BitwiseOr", "BitwiseXor", "Div", "Equal", "Greater",
            "GreaterOrEqual", "Less", "LessOrEqual", "Max", "Mean", "Min", "Mod", "Mul", "Or", "Pow", "PRelu",
            "Sub", "Sum", "Where", "Xor",
        ): ELEMENTWISE_BINARY,
        (
            "Celu", "Elu", "Gelu", "HardSigmoid", "HardSwish", "Hardmax", "LeakyRelu", "LogSoftmax", "Mish",
            "PRelu", "Relu", "Selu", "Sigmoid", "Softmax", "Softplus", "Softsign", "Swish", "Tanh",
            "ThresholdedRelu",
        ): ACTIVATION,
        (
            "BatchNormalization", "GroupNormalization", "InstanceNormalization", "LayerNormalization",
            "LpNormalization", "LRN", "MeanVarianceNormalization", "RMSNormalization",
        ): NORMALIZATION,
        (
            "AveragePool", "GlobalAveragePool", "GlobalLpPool", "GlobalMaxPool", "LpPool", "MaxPool",
            "MaxRoiPool", "MaxUnpool", "RoiAlign",
        ): POOLING,
        (
            "Compress", "Concat", "DepthToSpace", "Expand", "Flatten", "Gather", "GatherElements", "GatherND",
            "Pad", "Reshape", "Resize", "ReverseSequence", "Scatter", "ScatterElements", "ScatterND", "Slice",
            "SpaceToDepth", "Split", "Squeeze", "Tile", "Transpose", "Trilu", "Unsqueeze", "Upsample",
        ): DATA_MOVEMENT,
        (
            "ArgMax", "ArgMin", "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax",
            "ReduceMean", "ReduceMin", "ReduceProd", "ReduceSum", "ReduceSumSquare", "TopK", "CumSum",
        ): REDUCTION,
        ("Shape", "Size", "ConstantOfShape"): SHAPE,
        ("If", "Loop", "Scan"): CONTROL_FLOW,
        (
            "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "QLinearConv", "QLinearMatMul",
            "ConvInteger", "MatMulInteger",
        ): QUANTIZATION,
        ("Constant",): CONSTANT,
    }
)

# Non-default domains we know about: ONNX Runtime's contrib Q/DQ ops behave like the standard ones.
_OTHER = {
    ("com.microsoft", "QuantizeLinear"): {QUANTIZATION},
    ("com.microsoft", "DequantizeLinear"): {QUANTIZATION},
}

_METATYPES: dict[tuple[str, str], frozenset[str]] = {
    **{("", op_type): frozenset(cats) for op_type, cats in _DEFAULT.items()},
    **{key: frozenset(cats) for key, cats in _OTHER.items()},
}


def _domain(domain: str) -> str:
    return "" if domain in _DEFAULT_DOMAINS else domain


def op_metatypes(op_type: str, domain: str = "") -> frozenset[str]:
    """The categories of an op given by type and domain (empty set when unknown)."""
    return _METATYPES.get((_domain(domain), op_type), frozenset())


def metatypes(node: ir.Node) -> frozenset[str]:
    """The categories of `node` (empty set for ops the table does not know)."""
    return op_metatypes(node.op_type, node.domain)


def is_default_domain(node: ir.Node) -> bool:
    """True for ops of the standard ONNX domain ("" or "ai.onnx")."""
    return node.domain in _DEFAULT_DOMAINS


def is_linear(node: ir.Node) -> bool:
    """True for Conv, ConvTranspose, Gemm, MatMul (and their integer / QLinear forms)."""
    return LINEAR in metatypes(node)


def is_elementwise(node: ir.Node) -> bool:
    """True for ops that compute each output element from the same-position input elements."""
    cats = metatypes(node)
    return ELEMENTWISE_UNARY in cats or ELEMENTWISE_BINARY in cats


def has_subgraphs(node: ir.Node) -> bool:
    """True when any attribute of `node` holds a graph (If, Loop, Scan, custom ops)."""
    for attr in node.attributes.values():
        if attr.is_ref():
            continue
        if attr.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS):
            return True
    return False

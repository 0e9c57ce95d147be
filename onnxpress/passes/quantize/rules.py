"""Per-op quantization rules: what each op type needs to run as an integer kernel on the target.

`RULES` maps an op type to its `OpRule` (which inputs are quantized, the per-channel axis of its
weights, its bias, whether the kernel needs a quantized output, data movement sharing its input's
scale, outputs of known range). `FRAGILE` ops are never quantized; `FOLDABLE` activations fold
into their producer's output range (`fold_target`); `feeds_bias_add` spots the MatMul whose output
needs a Q so that ORT keeps it integer. `placement` reads these against calibrated ranges.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import onnx_ir as ir

from onnxpress.passes.cleanup import _util as u

__all__ = ["FOLDABLE", "FRAGILE", "NOT_FLOAT", "OpRule", "RULES", "SENTINEL_ABS", "feeds_bias_add", "fold_target",
           "is_float"]


#: A calibrated |value| this large is a mask / sentinel, never a signal worth a scale.
SENTINEL_ABS = 1e30

#: Numerically fragile ops: quantizing their inputs or outputs destroys accuracy (REFERENCES.md).
FRAGILE = frozenset(
    {
        "LayerNormalization", "RMSNormalization", "SimplifiedLayerNormalization", "GroupNormalization",
        "InstanceNormalization", "Pow", "Sqrt", "Div", "Reciprocal", "ReduceMean", "Erf", "Exp", "Log",
    }
)

#: Activations ORT removes in front of a Q whose zero point is the type's minimum (ReLU) or whose
#: range the clip covers: folded into the producer's output range.
FOLDABLE = frozenset({"Relu", "Clip"})

#: `_decide`'s answer for a node without float data (int64 shape arithmetic): not a candidate at all.
NOT_FLOAT = "no float inputs"

AxisFn = Callable[[ir.Node, int, int], "int | None"]


@dataclasses.dataclass(frozen=True)
class OpRule:
    """How one op type is quantized.

    inputs: indices of the float inputs to quantize (None: all inputs).
    weight_axis: (node, input index, weight rank) -> per-channel axis or None (per-tensor); where
        set, constant inputs become quantized weights; where None, a constant input keeps the op
        float.
    bias: index of an int32 bias input (scale = s_input0 · s_weight).
    output_q: the integer kernel needs a quantized output (QLinearConv, QLinearAdd, ...); MatMul
        and Gemm fuse without one (MatMulIntegerToFloat, QGemm with float output).
    shares_scale: data movement: the outputs take the input's scale, no new scale.
    constant_operands: a constant input (no weight axis) is quantized like an activation, with
        its own per-tensor scale from its values (QLinearAdd / QLinearMul).
    known_range: the output's range is known exactly (Softmax, Sigmoid): no calibration needed.
    """

    inputs: tuple[int, ...] | None = (0,)
    weight_axis: AxisFn | None = None
    bias: int | None = None
    output_q: bool = True
    shares_scale: bool = False
    constant_operands: bool = False
    known_range: tuple[float, float] | None = None


def _conv_axis(node: ir.Node, index: int, rank: int) -> int | None:
    return 0 if index == 1 else None


def _conv_transpose_axis(node: ir.Node, index: int, rank: int) -> int | None:
    # W is [C_in, C_out / group, k...]: axis 1 holds every output channel only when group == 1.
    return 1 if index == 1 and u.attr_int(node, "group", 1) == 1 else None


def _gemm_axis(node: ir.Node, index: int, rank: int) -> int | None:
    if index != 1 or rank != 2:
        return None
    return 0 if u.attr_int(node, "transB", 0) else 1


def _matmul_axis(node: ir.Node, index: int, rank: int) -> int | None:
    return 1 if index == 1 and rank == 2 else None


_POINTWISE = OpRule()
_SHARED = OpRule(output_q=False, shares_scale=True)

RULES: dict[str, OpRule] = {
    "Conv": OpRule(inputs=(0, 1), weight_axis=_conv_axis, bias=2),
    "ConvTranspose": OpRule(inputs=(0, 1), weight_axis=_conv_transpose_axis, bias=2),
    "Gemm": OpRule(inputs=(0, 1), weight_axis=_gemm_axis, bias=2, output_q=False),
    "MatMul": OpRule(inputs=(0, 1), weight_axis=_matmul_axis, output_q=False),
    "Add": OpRule(inputs=None, constant_operands=True),
    "Mul": OpRule(inputs=None, constant_operands=True),
    "Concat": OpRule(inputs=None),
    "Where": OpRule(inputs=(1, 2)),
    "AveragePool": _POINTWISE,
    "GlobalAveragePool": _POINTWISE,
    "LeakyRelu": _POINTWISE,
    "Softmax": OpRule(known_range=(0.0, 1.0)),
    "Sigmoid": OpRule(known_range=(0.0, 1.0)),
    **{
        op: _SHARED
        for op in (
            "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Gather", "GatherElements", "Slice",
            "Split", "MaxPool", "Resize", "Expand", "Tile", "DepthToSpace", "SpaceToDepth",
        )
    },
}


def is_float(value: ir.Value | None) -> bool:
    return value is not None and value.dtype == ir.DataType.FLOAT


def fold_target(node: ir.Node, excluded: Callable[[ir.Node], bool]) -> ir.Node | None:
    """The Relu / Clip whose output carries `node`'s quantized output, or None."""
    out = node.outputs[0]
    if out.is_graph_output() or len(out.uses()) != 1:
        return None
    user = next(iter(out.uses())).node
    if not u.is_onnx_op(user, *FOLDABLE) or excluded(user) or not is_float(user.outputs[0]):
        return None
    if user.op_type == "Clip" and any(
        v is not None and u.const_array(v) is None for v in user.inputs[1:]
    ):
        return None
    return user


def feeds_bias_add(node: ir.Node) -> bool:
    """A MatMul whose only reader adds a constant: without a Q on its output ORT fuses the pair
    into a float Gemm (with Reshapes for N-d inputs) and the integer MatMul is lost."""
    out = node.outputs[0]
    if node.op_type != "MatMul" or out.is_graph_output() or len(out.uses()) != 1:
        return False
    user = next(iter(out.uses())).node
    return u.is_onnx_op(user, "Add") and any(
        v is not None and v is not out and u.const_array(v) is not None for v in user.inputs
    )

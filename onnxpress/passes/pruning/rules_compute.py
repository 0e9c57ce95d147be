"""Channel rules for ops that compute: producers and consumers (Conv, Gemm, MatMul, embeddings),
normalizations, elementwise ops with broadcasting, pooling, resizing, reductions and softmax.

Registered into `handlers.RULES` on import; see `handlers.py` for the rule contract.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx_ir as ir

from onnxpress.passes.pruning.dependency import Slot
from onnxpress.passes.pruning.handlers import MULTI_INPUT_RULES, HandlerContext, rule


# ----------------------------------------------------------------------------------------------
# Producers and consumers
# ----------------------------------------------------------------------------------------------
def _bias(ctx: HandlerContext, node: ir.Node, index: int, out: np.ndarray) -> None:
    if len(node.inputs) <= index or node.inputs[index] is None:
        return
    b = node.inputs[index]
    arr = ctx.initializer(b)
    if arr is None or arr.ndim != 1 or arr.shape[0] != len(out):
        ctx.freeze(out, f"{ctx.name(node)}: bias is not a constant vector")
        ctx.deps.freeze_value(b, f"{ctx.name(node)}: bias is not a constant vector")
    else:
        ctx.member(b, 0, out, node, "bias")


@rule("Conv")
def _conv(ctx: HandlerContext, node: ir.Node) -> None:
    x, w = node.inputs[0], node.inputs[1]
    weight = ctx.initializer(w)
    xs = ctx.slot(x)
    y = node.outputs[0]
    if weight is None:
        ctx.freeze_inputs(node, f"{ctx.name(node)}: weight is not a constant")
        return
    if xs is not None and xs.axis != 1:
        ctx.freeze(xs.elements, f"{ctx.name(node)}: channels arrive on axis {xs.axis}, not 1")
        xs = None
    group = int(ctx.attr(node, "group", 1))
    c_out, c_in_per_group = weight.shape[0], weight.shape[1]
    if group == 1:
        if xs is not None:
            if len(xs) != c_in_per_group:
                ctx.freeze(xs.elements, f"{ctx.name(node)}: {len(xs)} channels arrive, weight expects {c_in_per_group}")
            else:
                ctx.member(w, 1, xs.elements, node, "in-channels")
        out = ctx.deps.new_elements(c_out, f"{ctx.name(node)} out", node, producer=True)
        ctx.member(w, 0, out, node, "out-channels")
        _bias(ctx, node, 2, out)
        ctx.set_slot(y, 1, out)
        return
    if c_in_per_group == 1 and xs is not None and len(xs) == group and c_out % group == 0:
        # Depthwise (channel multiplier m): output channel o reads input channel o // m.
        m = c_out // group
        out = np.repeat(xs.elements, m)
        ctx.member(w, 0, out, node, "depthwise")
        _bias(ctx, node, 2, out)
        elements = xs.elements

        def set_group(keep: Callable[[np.ndarray], np.ndarray], node: ir.Node = node) -> None:
            node.attributes["group"] = ir.AttrInt64("group", int(keep(elements).sum()))

        ctx.deps.add_action(node, "group = kept channels", set_group)
        ctx.set_slot(y, 1, out)
        return
    reason = f"{ctx.name(node)}: grouped Conv (group={group}) is not pruned"
    if xs is not None:
        ctx.freeze(xs.elements, reason)
    ctx.set_slot(y, 1, ctx.deps.untracked(c_out, f"{ctx.name(node)} out", reason))


@rule("ConvTranspose")
def _conv_transpose(ctx: HandlerContext, node: ir.Node) -> None:
    x, w = node.inputs[0], node.inputs[1]
    weight = ctx.initializer(w)
    xs = ctx.slot(x)
    y = node.outputs[0]
    group = int(ctx.attr(node, "group", 1))
    if weight is None or group != 1:
        reason = f"{ctx.name(node)}: " + ("weight is not a constant" if weight is None else f"group={group}")
        ctx.freeze_inputs(node, reason)
        if weight is not None:
            ctx.set_slot(y, 1, ctx.deps.untracked(weight.shape[1] * group, f"{ctx.name(node)} out", reason))
        return
    if xs is not None:
        if xs.axis != 1 or len(xs) != weight.shape[0]:
            ctx.freeze(xs.elements, f"{ctx.name(node)}: input channels do not match the weight")
        else:
            ctx.member(w, 0, xs.elements, node, "in-channels")
    out = ctx.deps.new_elements(weight.shape[1], f"{ctx.name(node)} out", node, producer=True)
    ctx.member(w, 1, out, node, "out-channels")
    _bias(ctx, node, 2, out)
    ctx.set_slot(y, 1, out)


@rule("Gemm")
def _gemm(ctx: HandlerContext, node: ir.Node) -> None:
    a, b = node.inputs[0], node.inputs[1]
    c = node.inputs[2] if len(node.inputs) > 2 else None
    trans_a, trans_b = int(ctx.attr(node, "transA", 0)), int(ctx.attr(node, "transB", 0))
    weight = ctx.initializer(b)
    xs = ctx.slot(a)
    if weight is None or weight.ndim != 2:
        ctx.freeze_inputs(node, f"{ctx.name(node)}: B is not a constant matrix")
        return
    k_axis, n_axis = (1, 0) if trans_b else (0, 1)
    if xs is not None:
        if xs.axis != (0 if trans_a else 1) or len(xs) != weight.shape[k_axis]:
            ctx.freeze(xs.elements, f"{ctx.name(node)}: features arrive on the wrong axis")
        else:
            ctx.member(b, k_axis, xs.elements, node, "in-features")
    n = weight.shape[n_axis]
    out = ctx.deps.new_elements(n, f"{ctx.name(node)} out", node, producer=True)
    ctx.member(b, n_axis, out, node, "out-features")
    if c is not None:
        bias = ctx.initializer(c)
        if bias is None:
            ctx.freeze(out, f"{ctx.name(node)}: C is not a constant")
        elif bias.ndim >= 1 and bias.shape[-1] == n and n > 1:
            ctx.member(c, bias.ndim - 1, out, node, "bias")
        elif bias.ndim >= 1 and bias.shape[-1] != 1:
            ctx.freeze(out, f"{ctx.name(node)}: C of shape {list(bias.shape)} does not broadcast per feature")
    ctx.set_slot(node.outputs[0], 1, out)


@rule("MatMul")
def _matmul(ctx: HandlerContext, node: ir.Node) -> None:
    a, b = node.inputs[0], node.inputs[1]
    weight = ctx.initializer(b)
    xs = ctx.slot(a)
    if weight is None or weight.ndim != 2 or ctx.initializer(a) is not None:
        ctx.freeze_inputs(node, f"{ctx.name(node)}: both operands are activations (or the weight is not a matrix)")
        return
    rank = ctx.rank(a)
    if rank is None and xs is not None:
        rank = xs.axis + 1
    if xs is not None:
        if rank is None or xs.axis != rank - 1 or len(xs) != weight.shape[0]:
            ctx.freeze(xs.elements, f"{ctx.name(node)}: features do not arrive on the last axis")
        else:
            ctx.member(b, 0, xs.elements, node, "in-features")
    out = ctx.deps.new_elements(weight.shape[1], f"{ctx.name(node)} out", node, producer=True)
    ctx.member(b, 1, out, node, "out-features")
    if rank is None or rank < 1:
        ctx.freeze(out, f"{ctx.name(node)}: input rank unknown")
        return
    ctx.set_slot(node.outputs[0], max(rank, 2) - 1 if rank > 1 else 0, out)


@rule("Gather")
def _gather(ctx: HandlerContext, node: ir.Node) -> None:
    data, indices = node.inputs[0], node.inputs[1]
    axis = int(ctx.attr(node, "axis", 0))
    table = ctx.initializer(data)
    ctx.deps.freeze_value(indices, f"{ctx.name(node)}: indices")
    q = ctx.rank(indices)
    if table is not None and table.ndim == 2 and axis == 0 and q is not None:
        # An embedding table: the output's last axis is the table's second axis.
        out = ctx.deps.new_elements(table.shape[1], f"{ctx.name(node)} embedding", node, producer=True)
        ctx.member(data, 1, out, node, "embedding")
        ctx.set_slot(node.outputs[0], q, out)
        return
    xs = ctx.slot(data)
    if xs is None:
        return
    r = ctx.rank(data)
    if r is None or q is None:
        ctx.freeze(xs.elements, f"{ctx.name(node)}: ranks unknown")
        return
    axis = axis % r
    if axis == xs.axis:
        ctx.freeze(xs.elements, f"{ctx.name(node)}: gathers along the channel axis")
        return
    ctx.set_slot(node.outputs[0], xs.axis if xs.axis < axis else xs.axis - 1 + q, xs.elements)


# ----------------------------------------------------------------------------------------------
# Normalizations
# ----------------------------------------------------------------------------------------------
def _channel_params(ctx: HandlerContext, node: ir.Node, params: list[ir.Value | None], xs: Slot) -> bool:
    values = [p for p in params if p is not None]
    arrays = [ctx.initializer(p) for p in values]
    if any(a is None or a.ndim != 1 or a.shape[0] != len(xs) for a in arrays):
        ctx.freeze_inputs(node, f"{ctx.name(node)}: parameters are not constant per-channel vectors")
        return False
    for p in values:
        ctx.member(p, 0, xs.elements, node, "norm-param")
    return True


def _extra_outputs_used(node: ir.Node) -> bool:
    return any(o is not None and (o.uses() or o.is_graph_output()) for o in node.outputs[1:])


@rule("BatchNormalization", "InstanceNormalization")
def _norm_per_channel(ctx: HandlerContext, node: ir.Node) -> None:
    xs = ctx.slot(node.inputs[0])
    if xs is None:
        return
    if xs.axis != 1 or int(ctx.attr(node, "training_mode", 0)) or _extra_outputs_used(node):
        ctx.freeze(xs.elements, f"{ctx.name(node)}: channels not on axis 1, or training mode")
        return
    if _channel_params(ctx, node, list(node.inputs[1:]), xs):
        ctx.set_slot(node.outputs[0], 1, xs.elements)


@rule("LayerNormalization")
def _layer_norm(ctx: HandlerContext, node: ir.Node) -> None:
    xs = ctx.slot(node.inputs[0])
    if xs is None:
        return
    r = ctx.rank(node.inputs[0])
    if r is None or _extra_outputs_used(node):
        ctx.freeze(xs.elements, f"{ctx.name(node)}: rank unknown or statistics outputs used")
        return
    axis = int(ctx.attr(node, "axis", -1)) % r
    if xs.axis < axis:  # normalises other axes: channels pass through untouched
        ctx.set_slot(node.outputs[0], xs.axis, xs.elements)
        return
    if not (ctx.allow_lossy_norms and axis == r - 1 == xs.axis):
        ctx.freeze(xs.elements, f"{ctx.name(node)} normalises over the channels: pruning changes its statistics (lossy)")
        return
    if _channel_params(ctx, node, list(node.inputs[1:3]), xs):
        ctx.set_slot(node.outputs[0], xs.axis, xs.elements)


@rule("GroupNormalization")
def _group_norm(ctx: HandlerContext, node: ir.Node) -> None:
    """With one channel per group (num_groups == C) it is an InstanceNormalization: channels are
    independent, `num_groups` follows the kept count. Larger groups must stay uniform: frozen."""
    xs = ctx.slot(node.inputs[0])
    if xs is None:
        return
    groups = int(ctx.attr(node, "num_groups", 0))
    if xs.axis != 1 or groups != len(xs):
        ctx.freeze(xs.elements, f"{ctx.name(node)}: channel groups must stay uniform (num_groups={groups})")
        return
    if not _channel_params(ctx, node, list(node.inputs[1:3]), xs):
        return
    elements = xs.elements

    def set_groups(keep: Callable[[np.ndarray], np.ndarray], node: ir.Node = node) -> None:
        node.attributes["num_groups"] = ir.AttrInt64("num_groups", int(keep(elements).sum()))

    ctx.deps.add_action(node, "num_groups = kept channels", set_groups)
    ctx.set_slot(node.outputs[0], 1, elements)


# ----------------------------------------------------------------------------------------------
# Elementwise
# ----------------------------------------------------------------------------------------------
UNARY = (
    "Relu", "LeakyRelu", "Sigmoid", "Tanh", "Gelu", "Erf", "HardSigmoid", "HardSwish", "Elu", "Selu",
    "Celu", "Softplus", "Softsign", "Mish", "ThresholdedRelu", "Exp", "Log", "Sqrt", "Neg", "Abs",
    "Reciprocal", "Floor", "Ceil", "Round", "Sign", "Sin", "Cos", "Tan", "Atan", "Asin", "Acos",
    "Sinh", "Cosh", "Asinh", "Acosh", "Atanh", "Not", "Identity", "Cast", "IsNaN", "IsInf",
    "Shrink", "Clip", "Dropout", "CastLike",
)


@rule(*UNARY)
def _unary(ctx: HandlerContext, node: ir.Node) -> None:
    xs = ctx.slot(node.inputs[0])
    if xs is None:
        return
    if node.op_type == "Dropout" and _extra_outputs_used(node):
        ctx.freeze(xs.elements, f"{ctx.name(node)}: mask output used")
        return
    for extra in node.inputs[1:]:  # Clip min/max, CastLike target: must be scalars / no channels
        if extra is not None and ctx.slot(extra) is not None:
            ctx.freeze_inputs(node, f"{ctx.name(node)}: channels in a secondary input")
            return
        dims = ctx.dims(extra) if extra is not None else []
        if node.op_type == "Clip" and dims not in ([], None) and any(d != 1 for d in dims):
            ctx.freeze(xs.elements, f"{ctx.name(node)}: non-scalar bounds")
            return
    ctx.set_slot(node.outputs[0], xs.axis, xs.elements)


BROADCASTING = (
    "Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "Mod", "PRelu", "Where",
    "Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "And", "Or", "Xor", "BitShift",
)


@rule(*BROADCASTING)
def _broadcasting(ctx: HandlerContext, node: ir.Node) -> None:
    """Numpy broadcasting: right-align shapes; slotted inputs tie together (residual branches);
    a constant with C entries on the channel axis is a parameter member; size 1 broadcasts."""
    inputs = [v for v in node.inputs if v is not None]
    slotted = [(v, ctx.slot(v)) for v in inputs if ctx.slot(v) is not None]
    if not slotted:
        return
    out = node.outputs[0]
    ranks = [ctx.rank(v) for v in inputs]
    if any(r is None for r in ranks):
        ctx.freeze_inputs(node, f"{ctx.name(node)}: input ranks unknown")
        return
    r_out = max(ranks)  # type: ignore[type-var]
    axes = {s.axis + r_out - ctx.rank(v) for v, s in slotted}  # type: ignore[operator]
    if len(axes) != 1:
        ctx.freeze_inputs(node, f"{ctx.name(node)}: inputs carry channels on different axes")
        return
    c = axes.pop()
    elements = slotted[0][1].elements
    for _v, s in slotted[1:]:
        ctx.deps.unify(elements, s.elements, f"{ctx.name(node)} ties its inputs")
    n = len(elements)
    for v in inputs:
        if ctx.slot(v) is not None:
            continue
        dims = ctx.dims(v)
        aligned = c - (r_out - len(dims))  # type: ignore[arg-type]
        if aligned < 0:
            continue
        size = dims[aligned]  # type: ignore[index]
        if size == 1:
            continue
        if size != n:
            ctx.freeze(elements, f"{ctx.name(node)}: operand '{v.name}' has {size} entries on the channel axis")
        elif ctx.initializer(v) is not None:
            ctx.member(v, aligned, elements, node, "operand")
        else:
            ctx.freeze(elements, f"{ctx.name(node)}: operand '{v.name}' is not constant")
    ctx.set_slot(out, c, elements)


MULTI_INPUT_RULES.add(_broadcasting)


# ----------------------------------------------------------------------------------------------
# Pooling, resizing, reductions, softmax
# ----------------------------------------------------------------------------------------------
@rule("MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool", "GlobalLpPool", "MaxRoiPool")
def _pool(ctx: HandlerContext, node: ir.Node) -> None:
    xs = ctx.slot(node.inputs[0])
    if xs is None:
        return
    if xs.axis != 1 or _extra_outputs_used(node) or len(node.inputs) > 1:
        ctx.freeze(xs.elements, f"{ctx.name(node)}: channels not on axis 1, or indices used")
        return
    ctx.set_slot(node.outputs[0], 1, xs.elements)


@rule("Resize", "Upsample")
def _resize(ctx: HandlerContext, node: ir.Node) -> None:
    """Channels pass when their scale is a constant 1 or their target size is C (then rewritten)."""
    xs = ctx.slot(node.inputs[0])
    if xs is None:
        return
    inputs = list(node.inputs) + [None] * 4
    if node.op_type == "Upsample" or ctx.opset < 11:
        scales_v, sizes_v = inputs[1], None
    else:
        scales_v, sizes_v = inputs[2], inputs[3]
    scales = ctx.const(scales_v) if scales_v is not None else None
    sizes = ctx.const(sizes_v) if sizes_v is not None else None
    if (scales_v is not None and scales is None) or (sizes_v is not None and sizes is None):
        ctx.freeze(xs.elements, f"{ctx.name(node)}: scales or sizes not constant")
        return
    if ctx.attr(node, "coordinate_transformation_mode", "") == "tf_crop_and_resize":
        ctx.freeze(xs.elements, f"{ctx.name(node)}: crops by a region of interest")
        return
    axes = ctx.attr(node, "axes", None)
    r = ctx.rank(node.inputs[0])
    if axes is not None and r is None:
        ctx.freeze(xs.elements, f"{ctx.name(node)}: rank unknown")
        return
    positions = [int(a) % r for a in axes] if axes is not None else None  # type: ignore[operator]
    if positions is not None and xs.axis not in positions:
        ctx.set_slot(node.outputs[0], xs.axis, xs.elements)
        return
    index = positions.index(xs.axis) if positions is not None else xs.axis
    if sizes is not None and sizes.size:
        sizes = sizes.reshape(-1)
        if index >= sizes.size or int(sizes[index]) != len(xs):
            ctx.freeze(xs.elements, f"{ctx.name(node)}: resizes the channel axis")
            return
        elements, dtype = xs.elements, sizes.dtype

        def rewrite(keep: Callable[[np.ndarray], np.ndarray], node: ir.Node = node) -> None:
            new = ctx.const(node.inputs[3]).reshape(-1).copy()
            new[index] = int(keep(elements).sum())
            ctx.new_int_input(node, 3, new, f"{node.inputs[3].name}_pruned", dtype)

        ctx.deps.add_action(node, f"sizes[{index}] = kept channels", rewrite)
    elif scales is None or scales.size == 0 or index >= scales.size or float(scales.reshape(-1)[index]) != 1.0:
        ctx.freeze(xs.elements, f"{ctx.name(node)}: channel scale is not a constant 1")
        return
    ctx.set_slot(node.outputs[0], xs.axis, xs.elements)


@rule("Pad")
def _pad(ctx: HandlerContext, node: ir.Node) -> None:
    xs = ctx.slot(node.inputs[0])
    if xs is None:
        return
    r = ctx.rank(node.inputs[0])
    pads = ctx.attr(node, "pads") if ctx.opset < 11 else ctx.const(node.inputs[1] if len(node.inputs) > 1 else None)
    axes_in = node.inputs[3] if len(node.inputs) > 3 else None
    if pads is None or r is None or axes_in is not None or len(pads) != 2 * r:
        ctx.freeze(xs.elements, f"{ctx.name(node)}: pads unknown")
        return
    pads = list(np.asarray(pads).reshape(-1))
    if pads[xs.axis] != 0 or pads[xs.axis + r] != 0:
        ctx.freeze(xs.elements, f"{ctx.name(node)}: pads the channel axis")
        return
    ctx.set_slot(node.outputs[0], xs.axis, xs.elements)


@rule("Softmax", "LogSoftmax", "Hardmax")
def _softmax(ctx: HandlerContext, node: ir.Node) -> None:
    xs = ctx.slot(node.inputs[0])
    if xs is None:
        return
    r = ctx.rank(node.inputs[0])
    default = -1 if ctx.opset >= 13 else 1
    axis = int(ctx.attr(node, "axis", default))
    if r is None:
        ctx.freeze(xs.elements, f"{ctx.name(node)}: rank unknown")
        return
    axis %= r
    touches = xs.axis == axis if ctx.opset >= 13 else xs.axis >= axis
    if touches:
        ctx.freeze(xs.elements, f"{ctx.name(node)} normalises over the channels")
        return
    ctx.set_slot(node.outputs[0], xs.axis, xs.elements)


REDUCE = ("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
          "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare", "ArgMax", "ArgMin")


@rule(*REDUCE)
def _reduce(ctx: HandlerContext, node: ir.Node) -> None:
    found = ctx.slot_and_rank(node)
    if found is None:
        return
    xs, r = found
    keepdims = int(ctx.attr(node, "keepdims", 1))
    if node.op_type in ("ArgMax", "ArgMin"):
        axes = [int(ctx.attr(node, "axis", 0)) % r]
    else:
        axes_attr = ctx.attr(node, "axes", None)
        axes_in = ctx.const(node.inputs[1]) if len(node.inputs) > 1 and node.inputs[1] is not None else None
        if len(node.inputs) > 1 and node.inputs[1] is not None and axes_in is None:
            ctx.freeze(xs.elements, f"{ctx.name(node)}: axes not constant")
            return
        raw = axes_attr if axes_attr is not None else (list(axes_in.reshape(-1)) if axes_in is not None else [])
        if not raw and int(ctx.attr(node, "noop_with_empty_axes", 0)) == 0:
            raw = list(range(r))
        axes = sorted(int(a) % r for a in raw)
    if xs.axis in axes:
        ctx.freeze(xs.elements, f"{ctx.name(node)} reduces over the channels")
        return
    axis = xs.axis if keepdims else xs.axis - sum(1 for a in axes if a < xs.axis)
    ctx.set_slot(node.outputs[0], axis, xs.elements)

"""Per-op channel rules for ChannelDependencyAnalysis, looked up by op type.

Each rule reads the slots (tracked channel axis + elements) of a node's inputs and either passes
them on to its outputs, ties them together, records the constant slices that belong to them, or
freezes them with a reason. The rules follow ../shared/REFERENCES.md ("Structured pruning on
ONNX"), made strict: an op without a rule freezes every channel that reaches it, so the analysis
may miss a chance to prune but never produces a wrong model.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import numpy as np
import onnx_ir as ir

from onnxpress.passes.pruning.dependency import ChannelDependencies, Slot

__all__ = ["HandlerContext", "handle", "RULES"]

logger = logging.getLogger(__name__)

Rule = Callable[["HandlerContext", ir.Node], None]
RULES: dict[str, Rule] = {}


def rule(*op_types: str) -> Callable[[Rule], Rule]:
    def register(fn: Rule) -> Rule:
        for op in op_types:
            RULES[op] = fn
        return fn

    return register


class HandlerContext:
    """What rules need: the dependencies being built, constants, shapes, opset."""

    def __init__(self, deps: ChannelDependencies, model: ir.Model, *, allow_lossy_norms: bool = False) -> None:
        self.deps = deps
        self.model = model
        self.graph = model.graph
        self.allow_lossy_norms = allow_lossy_norms
        self.opset = model.opset_imports.get("", model.opset_imports.get("ai.onnx", 13))
        self._graph_inputs = {id(v) for v in self.graph.inputs}
        self._member_users: dict[int, set[int]] = defaultdict(set)  # id(initializer) -> id(nodes)

    # -- reading the graph -------------------------------------------------------------------
    def initializer(self, value: ir.Value | None) -> np.ndarray | None:
        """The array of a constant initializer (not an overridable graph input), else None."""
        if value is None or value.const_value is None or id(value) in self._graph_inputs:
            return None
        if self.graph.initializers.get(value.name) is not value:
            return None
        return value.const_value.numpy()

    def const(self, value: ir.Value | None) -> np.ndarray | None:
        """Any constant value (initializer or folded Constant output), for reading attributes."""
        if value is None or value.const_value is None or id(value) in self._graph_inputs:
            return None
        return value.const_value.numpy()

    def dims(self, value: ir.Value | None) -> list[int | None] | None:
        if value is None or value.shape is None:
            return None
        return [d if isinstance(d, int) else None for d in value.shape]

    def symbolic_dims(self, value: ir.Value | None) -> list[int | str | None] | None:
        if value is None or value.shape is None:
            return None
        out: list[int | str | None] = []
        for d in value.shape:
            if isinstance(d, int):
                out.append(d)
            else:
                name = getattr(d, "value", None)
                out.append(name if isinstance(name, str) and name else None)
        return out

    def rank(self, value: ir.Value | None) -> int | None:
        dims = self.dims(value)
        return None if dims is None else len(dims)

    def attr(self, node: ir.Node, name: str, default: Any = None) -> Any:
        a = node.attributes.get(name)
        return default if a is None else a.value

    def slot(self, value: ir.Value | None) -> Slot | None:
        return self.deps.slot(value)

    def set_slot(self, value: ir.Value | None, axis: int, elements: np.ndarray) -> None:
        if value is not None:
            self.deps.set_slot(value, Slot(axis, np.asarray(elements, dtype=np.int64)))

    def freeze(self, elements: np.ndarray, reason: str) -> None:
        self.deps.freeze(elements, reason)

    def freeze_inputs(self, node: ir.Node, reason: str) -> None:
        for v in node.inputs:
            self.deps.freeze_value(v, reason)

    def member(self, value: ir.Value, axis: int, elements: np.ndarray, node: ir.Node, role: str) -> None:
        self.deps.add_member(value, axis, elements, node, role)
        self._member_users[id(value)].add(id(node))

    def name(self, node: ir.Node) -> str:
        return f"{node.op_type} '{node.name or (node.outputs[0].name if node.outputs else '?')}'"

    def new_int_input(self, node: ir.Node, index: int, array: np.ndarray, base: str, dtype: Any = np.int64) -> None:
        """Give `node` a new constant integer initializer as input `index` (the old one may be
        shared, so it is never edited; it is dropped when nothing reads it any more)."""
        name = base
        k = 0
        while name in self.graph.initializers:
            k += 1
            name = f"{base}_{k}"
        tensor = ir.tensor(np.asarray(array, dtype=dtype), name=name)
        value = ir.Value(name=name, const_value=tensor)
        value.shape = ir.Shape(list(np.asarray(array).shape))
        value.type = ir.TensorType(tensor.dtype)
        self.graph.register_initializer(value)
        old = node.inputs[index] if index < len(node.inputs) else None
        if index >= len(node.inputs):
            node.resize_inputs(index + 1)
        node.replace_input_with(index, value)
        if (old is not None and not old.uses() and not old.is_graph_output() and id(old) not in self._graph_inputs
                and self.graph.initializers.get(old.name) is old):
            self.graph.initializers.pop(old.name)  # the replaced constant is read by nothing else

    # -- after the walk ------------------------------------------------------------------------
    def check_member_uses(self) -> None:
        """Freeze members whose weight is also read by a node that did not account for it, and
        tie together members that share a weight along the same axis."""
        by_value: dict[int, list] = defaultdict(list)
        for m in self.deps.members:
            by_value[id(m.value)].append(m)
        for members in by_value.values():
            value = members[0].value
            users = {id(n) for n, _ in value.uses()}
            registered = self._member_users[id(value)]
            elements = np.concatenate([m.elements for m in members])
            if value.is_graph_output():
                self.freeze(elements, f"weight '{value.name}' is a graph output")
            elif not users <= registered:
                others = [n.op_type for n, _ in value.uses() if id(n) not in registered]
                self.freeze(elements, f"weight '{value.name}' is also read by {', '.join(sorted(set(others)))}")
            by_axis: dict[int, list] = defaultdict(list)
            for m in members:
                by_axis[m.axis].append(m)
            for axis, same_axis in by_axis.items():
                # Every reader must see the sliced axis as channels it prunes too: a second Conv
                # fed by a graph input would otherwise get a weight narrower than its input.
                readers = {id(m.node) for m in same_axis}
                if users - readers:
                    self.freeze(np.concatenate([m.elements for m in same_axis]),
                                f"weight '{value.name}' axis {axis} is shared with a layer whose channels are not tracked")
                for other in same_axis[1:]:
                    self.deps.unify(same_axis[0].elements, other.elements, f"shared weight '{value.name}'")


def handle(ctx: HandlerContext, node: ir.Node) -> None:
    """Apply the rule for `node`, or freeze everything that reaches it."""
    if _has_subgraph(node):
        _freeze_subgraph_node(ctx, node)
        return
    if node.domain not in ("", "ai.onnx"):
        ctx.freeze_inputs(node, f"{node.domain}.{node.op_type} is not understood")
        return
    fn = RULES.get(node.op_type)
    if fn is None:
        if any(ctx.slot(v) is not None for v in node.inputs):
            ctx.freeze_inputs(node, f"{node.op_type} is not understood by the pruning rules")
        return
    fn(ctx, node)
    if fn not in (_broadcasting, _concat):
        # Only n-ary elementwise ops and Concat reason about channels beyond their first input:
        # anywhere else a tracked value in a parameter slot (a dynamic weight, bias, scale) stays.
        for v in node.inputs[1:]:
            ctx.deps.freeze_value(v, f"{ctx.name(node)} reads it as a parameter")


def _has_subgraph(node: ir.Node) -> bool:
    return any(a.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS) for a in node.attributes.values())


def _freeze_subgraph_node(ctx: HandlerContext, node: ir.Node) -> None:
    reason = f"{ctx.name(node)} has subgraphs"
    ctx.freeze_inputs(node, reason)
    for attr in node.attributes.values():
        graphs = [attr.value] if attr.type == ir.AttributeType.GRAPH else list(attr.value) if attr.type == ir.AttributeType.GRAPHS else []
        for g in graphs:
            for inner in ir.traversal.RecursiveGraphIterator(g):
                for v in inner.inputs:
                    ctx.deps.freeze_value(v, reason)  # outer-scope values captured by the body


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
    xs = ctx.slot(node.inputs[0])
    if xs is None:
        return
    r = ctx.rank(node.inputs[0])
    if r is None:
        ctx.freeze(xs.elements, f"{ctx.name(node)}: rank unknown")
        return
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


# ----------------------------------------------------------------------------------------------
# Data movement
# ----------------------------------------------------------------------------------------------
@rule("Transpose")
def _transpose(ctx: HandlerContext, node: ir.Node) -> None:
    xs = ctx.slot(node.inputs[0])
    if xs is None:
        return
    r = ctx.rank(node.inputs[0])
    perm = ctx.attr(node, "perm", None)
    if perm is None:
        if r is None:
            ctx.freeze(xs.elements, f"{ctx.name(node)}: rank unknown")
            return
        perm = list(reversed(range(r)))
    ctx.set_slot(node.outputs[0], list(perm).index(xs.axis), xs.elements)


def _axes_input(ctx: HandlerContext, node: ir.Node) -> list[int] | None:
    if ctx.opset >= 13 and node.op_type in ("Squeeze", "Unsqueeze"):
        if len(node.inputs) < 2 or node.inputs[1] is None:
            return None
        arr = ctx.const(node.inputs[1])
        return None if arr is None else [int(a) for a in arr.reshape(-1)]
    axes = ctx.attr(node, "axes", None)
    return None if axes is None else [int(a) for a in axes]


@rule("Unsqueeze")
def _unsqueeze(ctx: HandlerContext, node: ir.Node) -> None:
    xs = ctx.slot(node.inputs[0])
    if xs is None:
        return
    r = ctx.rank(node.inputs[0])
    axes = _axes_input(ctx, node)
    if axes is None or r is None:
        ctx.freeze(xs.elements, f"{ctx.name(node)}: axes or rank unknown")
        return
    r_out = r + len(axes)
    inserted = sorted(a % r_out for a in axes)
    kept_positions = [i for i in range(r_out) if i not in inserted]
    ctx.set_slot(node.outputs[0], kept_positions[xs.axis], xs.elements)


@rule("Squeeze")
def _squeeze(ctx: HandlerContext, node: ir.Node) -> None:
    xs = ctx.slot(node.inputs[0])
    if xs is None:
        return
    dims = ctx.dims(node.inputs[0])
    axes = _axes_input(ctx, node)
    if dims is None:
        ctx.freeze(xs.elements, f"{ctx.name(node)}: rank unknown")
        return
    r = len(dims)
    if axes is None:
        if len(node.inputs) > 1 and node.inputs[1] is not None or ctx.attr(node, "axes") is not None:
            ctx.freeze(xs.elements, f"{ctx.name(node)}: axes not constant")
            return
        if any(d is None for d in dims):
            ctx.freeze(xs.elements, f"{ctx.name(node)}: squeezes unknown dims")
            return
        axes = [i for i, d in enumerate(dims) if d == 1]
    axes = [a % r for a in axes]
    if xs.axis in axes:
        ctx.freeze(xs.elements, f"{ctx.name(node)} squeezes the channel axis")
        return
    ctx.set_slot(node.outputs[0], xs.axis - sum(1 for a in axes if a < xs.axis), xs.elements)


@rule("Flatten")
def _flatten(ctx: HandlerContext, node: ir.Node) -> None:
    xs = ctx.slot(node.inputs[0])
    if xs is None:
        return
    dims = ctx.dims(node.inputs[0])
    if dims is None:
        ctx.freeze(xs.elements, f"{ctx.name(node)}: shape unknown")
        return
    k = int(ctx.attr(node, "axis", 1)) % (len(dims) + 1)
    if xs.axis < k:
        ctx.freeze(xs.elements, f"{ctx.name(node)} merges the channels into the leading axis")
        return
    inner, outer = dims[xs.axis + 1 :], dims[k : xs.axis]
    if any(d is None for d in inner + outer):
        ctx.freeze(xs.elements, f"{ctx.name(node)}: dims merged with the channels are not static")
        return
    s, t = int(np.prod(inner, dtype=np.int64)), int(np.prod(outer, dtype=np.int64))
    ctx.set_slot(node.outputs[0], 1, np.tile(np.repeat(xs.elements, s), t))


def _product(dims: list[int | str | None]) -> tuple[int, tuple[str, ...]] | None:
    """A product of dims as (known factor, sorted unknown symbols); None when a dim is anonymous."""
    known, symbols = 1, []
    for d in dims:
        if d is None:
            return None
        if isinstance(d, int):
            known *= d
        else:
            symbols.append(d)
    return known, tuple(sorted(symbols))


def _reshape_channel_axis(d_in: list, d_out: list, c: int, n: int) -> tuple[int, int] | None:
    """(output axis j, repeat s) when the n channels on input axis c land on output axis j, alone
    (s = 1) or merged with the s positions of the static dims right after them; else None.

    Several output axes can have the same leading product when dims of size 1 surround the
    channels ([1, C, H, W] -> [1, C*H*W]): each candidate is tried in turn."""
    before = _product(d_in[:c])
    if before is None:
        return None
    after_in = _product(d_in[c + 1 :])
    for j in range(len(d_out)):
        p = _product(d_out[:j])
        if p is None:
            return None
        if p != before:
            continue
        out_dim, after_out = d_out[j], _product(d_out[j + 1 :])
        if after_in is None or after_out is None:
            return None
        if out_dim == n and after_in == after_out:
            return j, 1
        if isinstance(out_dim, int) and out_dim % n == 0:
            for m in range(1, len(d_in) - c):  # channels merged with the first m dims after them
                merged = _product(d_in[c + 1 : c + 1 + m])
                rest = _product(d_in[c + 1 + m :])
                if merged is not None and not merged[1] and merged[0] * n == out_dim and rest == after_out:
                    return j, merged[0]
    return None


@rule("Reshape")
def _reshape(ctx: HandlerContext, node: ir.Node) -> None:
    """Follow channels through a Reshape whose target is constant:
    (a) the channel axis survives as its own dim (maybe moved) -> same elements;
    (b) the channel axis merges with the dims after it ([N,C,H,W] -> [N,C*H*W]) -> each element
        repeated H*W times. Literal sizes in the target are rewritten after pruning.
    Anything else (channels split into heads, merged with leading dims) freezes them."""
    data, shape = node.inputs[0], node.inputs[1]
    xs = ctx.slot(data)
    if xs is None:
        return
    target = ctx.initializer(shape)
    d_in, d_out = ctx.symbolic_dims(data), ctx.symbolic_dims(node.outputs[0])
    if target is None or d_in is None or d_out is None or len(target) != len(d_out):
        ctx.freeze(xs.elements, f"{ctx.name(node)}: target shape not constant or shapes unknown")
        return
    c = xs.axis
    n = len(xs)
    found = _reshape_channel_axis(d_in, d_out, c, n)
    if found is None:
        ctx.freeze(xs.elements, f"{ctx.name(node)} splits or regroups the channels")
        return
    j, s = found
    if any(int(t) == 0 and k == c != j for k, t in enumerate(target)):
        ctx.freeze(xs.elements, f"{ctx.name(node)}: target copies the channel count to another axis")
        return
    if int(target[j]) == 0 and (j != c or s != 1 or int(ctx.attr(node, "allowzero", 0))):
        ctx.freeze(xs.elements, f"{ctx.name(node)}: target copies a dim that pruning would not change")
        return
    ctx.set_slot(node.outputs[0], j, np.repeat(xs.elements, s))
    if int(target[j]) > 0:  # a literal size (not 0 = copy or -1 = infer) must follow the pruning
        elements, factor, index = xs.elements, s, j

        def rewrite(keep: Callable[[np.ndarray], np.ndarray], node: ir.Node = node) -> None:
            new = ctx.const(node.inputs[1]).copy()
            new[index] = int(keep(elements).sum()) * factor
            ctx.new_int_input(node, 1, new, f"{node.inputs[1].name}_pruned")

        ctx.deps.add_action(node, f"target[{j}] = kept channels x {s}", rewrite)


@rule("Concat")
def _concat(ctx: HandlerContext, node: ir.Node) -> None:
    inputs = list(node.inputs)
    slotted = [ctx.slot(v) for v in inputs]
    if not any(s is not None for s in slotted):
        return
    r = ctx.rank(node.outputs[0]) or next((ctx.rank(v) for v in inputs if ctx.rank(v) is not None), None)
    if r is None:
        ctx.freeze_inputs(node, f"{ctx.name(node)}: rank unknown")
        return
    axis = int(ctx.attr(node, "axis", 0)) % r
    axes = {s.axis for s in slotted if s is not None}
    if axes == {axis}:
        parts = []
        for v, s in zip(inputs, slotted):
            if s is not None:
                parts.append(s.elements)
                continue
            dims = ctx.dims(v)
            if dims is None or dims[axis] is None:
                ctx.freeze_inputs(node, f"{ctx.name(node)}: input '{v.name}' has an unknown size")
                return
            parts.append(ctx.deps.untracked(dims[axis], f"{ctx.name(node)} input '{v.name}'",
                                            "channels not produced by a prunable layer"))
        ctx.set_slot(node.outputs[0], axis, np.concatenate(parts))
        return
    if len(axes) == 1:  # concatenation along another axis (tokens): channels are shared
        _broadcasting(ctx, node)
        return
    ctx.freeze_inputs(node, f"{ctx.name(node)}: inputs carry channels on different axes")


@rule("Split")
def _split(ctx: HandlerContext, node: ir.Node) -> None:
    xs = ctx.slot(node.inputs[0])
    if xs is None:
        return
    r = ctx.rank(node.inputs[0])
    if r is None:
        ctx.freeze(xs.elements, f"{ctx.name(node)}: rank unknown")
        return
    axis = int(ctx.attr(node, "axis", 0)) % r
    outputs = list(node.outputs)
    if axis != xs.axis:
        for o in outputs:
            ctx.set_slot(o, xs.axis, xs.elements)
        return
    if ctx.opset >= 13:
        sizes_in = node.inputs[1] if len(node.inputs) > 1 else None
        sizes = ctx.const(sizes_in) if sizes_in is not None else None
        if sizes_in is not None and sizes is None:
            ctx.freeze(xs.elements, f"{ctx.name(node)}: split sizes not constant")
            return
    else:
        sizes = ctx.attr(node, "split", None)
    n = len(xs)
    if sizes is None:
        if n % len(outputs):
            ctx.freeze(xs.elements, f"{ctx.name(node)}: uneven split")
            return
        sizes = [n // len(outputs)] * len(outputs)
    sizes = [int(v) for v in np.asarray(sizes).reshape(-1)]
    if sum(sizes) != n or len(sizes) != len(outputs):
        ctx.freeze(xs.elements, f"{ctx.name(node)}: split sizes do not match")
        return
    pieces, start = [], 0
    for o, size in zip(outputs, sizes):
        piece = xs.elements[start : start + size]
        ctx.set_slot(o, axis, piece)
        pieces.append(piece)
        start += size

    def rewrite(keep: Callable[[np.ndarray], np.ndarray], node: ir.Node = node) -> None:
        new = [int(keep(p).sum()) for p in pieces]
        if ctx.opset >= 13:
            if "num_outputs" in node.attributes:
                del node.attributes["num_outputs"]
            ctx.new_int_input(node, 1, np.array(new), f"{node.name or 'split'}_sizes_pruned")
        else:
            node.attributes["split"] = ir.AttrInt64s("split", new)

    ctx.deps.add_action(node, "split sizes = kept channels per piece", rewrite)
    ctx.deps.require_nonempty.extend(pieces)


@rule("Slice")
def _slice(ctx: HandlerContext, node: ir.Node) -> None:
    """Slicing other axes passes the channels through. A step-1 slice of the channel axis keeps a
    contiguous range of them: its starts/ends are rewritten to the kept range after pruning."""
    xs = ctx.slot(node.inputs[0])
    if xs is None:
        return
    r = ctx.rank(node.inputs[0])
    params = _slice_params(ctx, node)
    if r is None or params is None:
        ctx.freeze(xs.elements, f"{ctx.name(node)}: slice parameters not constant or rank unknown")
        return
    starts, ends, axes, steps = params
    on_channels = [i for i, a in enumerate(axes) if int(a) % r == xs.axis]
    if not on_channels:
        ctx.set_slot(node.outputs[0], xs.axis, xs.elements)
        return
    i = on_channels[0]
    n = len(xs)
    lo, hi = _clamp(int(starts[i]), n), _clamp(int(ends[i]), n)
    if len(on_channels) > 1 or int(steps[i]) != 1 or lo >= hi:
        ctx.freeze(xs.elements, f"{ctx.name(node)} slices the channel axis with a step or twice")
        return
    elements, piece = xs.elements, xs.elements[lo:hi]

    def rewrite(keep: Callable[[np.ndarray], np.ndarray], node: ir.Node = node) -> None:
        new_lo, new_hi = int(keep(elements[:lo]).sum()), int(keep(elements[:hi]).sum())
        if ctx.opset < 10:
            for key, v in (("starts", new_lo), ("ends", new_hi)):
                values = list(node.attributes[key].value)
                values[i] = v
                node.attributes[key] = ir.AttrInt64s(key, values)
            return
        for k, v in ((1, new_lo), (2, new_hi)):
            old = ctx.const(node.inputs[k])
            new = old.reshape(-1).copy()
            new[i] = v
            ctx.new_int_input(node, k, new, f"{node.inputs[k].name}_pruned", old.dtype)

    ctx.deps.add_action(node, f"channel range [{lo}, {hi}) = kept range", rewrite)
    ctx.deps.require_nonempty.append(piece)
    ctx.set_slot(node.outputs[0], xs.axis, piece)


def _slice_params(ctx: HandlerContext, node: ir.Node) -> tuple[list[int], list[int], list[int], list[int]] | None:
    """(starts, ends, axes, steps) of a Slice when they are all constant, else None."""
    if ctx.opset < 10:
        starts, ends = ctx.attr(node, "starts", None), ctx.attr(node, "ends", None)
        if starts is None or ends is None:
            return None
        axes = ctx.attr(node, "axes", None) or list(range(len(starts)))
        return list(starts), list(ends), list(axes), [1] * len(starts)
    inputs = list(node.inputs) + [None] * (5 - len(node.inputs))
    arrays = []
    for k in range(1, 5):
        if inputs[k] is None:
            arrays.append(None)
            continue
        a = ctx.const(inputs[k])
        if a is None:
            return None
        arrays.append([int(v) for v in a.reshape(-1)])
    starts, ends, axes, steps = arrays
    if starts is None or ends is None:
        return None
    return starts, ends, axes if axes is not None else list(range(len(starts))), steps or [1] * len(starts)


@rule("Shape")
def _shape(ctx: HandlerContext, node: ir.Node) -> None:
    """Reading the shape is harmless unless the channel count itself is read: the output may
    feed Gathers and single-axis Slices (step 1) that pick other dims; anything else freezes."""
    xs = ctx.slot(node.inputs[0])
    if xs is None:
        return
    r = ctx.rank(node.inputs[0])
    if r is None:
        ctx.freeze(xs.elements, f"{ctx.name(node)}: rank unknown")
        return
    lo, hi = (_clamp(int(ctx.attr(node, k, d)), r) for k, d in (("start", 0), ("end", r)))
    if not lo <= xs.axis < hi:
        return  # the channel dim is not in this Shape's output
    position, size = xs.axis - lo, hi - lo
    for user, _ in node.outputs[0].uses():
        if user.op_type == "Gather" and user.inputs[0] is node.outputs[0]:
            idx = ctx.const(user.inputs[1])
            if idx is not None and position not in [int(i) % size for i in idx.reshape(-1)]:
                continue
        if user.op_type == "Slice" and user.inputs[0] is node.outputs[0] and _slice_excludes(ctx, user, position, size):
            continue
        ctx.freeze(xs.elements, f"{ctx.name(node)}: the channel count is read by {user.op_type}")
        return
    if node.outputs[0].is_graph_output():
        ctx.freeze(xs.elements, f"{ctx.name(node)} is a graph output")


def _clamp(index: int, size: int) -> int:
    """A start/end index as Shape and Slice read it: negative counts from the end, then clamped."""
    return min(max(index + size if index < 0 else index, 0), size)


def _slice_excludes(ctx: HandlerContext, node: ir.Node, position: int, size: int) -> bool:
    """True when a Slice (opset >= 10) of a 1-D tensor certainly does not read `position`."""
    inputs = list(node.inputs) + [None] * (5 - len(node.inputs))
    starts, ends = ctx.const(inputs[1]), ctx.const(inputs[2])
    axes = ctx.const(inputs[3]) if inputs[3] is not None else np.zeros(1, np.int64)
    steps = ctx.const(inputs[4]) if inputs[4] is not None else np.ones(1, np.int64)
    if any(a is None or a.size != 1 for a in (starts, ends, axes, steps)) or ctx.opset < 10:
        return False
    if int(steps.reshape(-1)[0]) != 1 or int(axes.reshape(-1)[0]) not in (0, -1):
        return False
    lo, hi = _clamp(int(starts.reshape(-1)[0]), size), _clamp(int(ends.reshape(-1)[0]), size)
    return not lo <= position < hi


@rule("QuantizeLinear", "DequantizeLinear")
def _qdq(ctx: HandlerContext, node: ir.Node) -> None:
    xs = ctx.slot(node.inputs[0])
    if xs is None:
        return
    scale = ctx.const(node.inputs[1])
    if scale is None or scale.size != 1:
        ctx.freeze_inputs(node, f"{ctx.name(node)}: per-channel or dynamic quantization parameters")
        return
    ctx.set_slot(node.outputs[0], xs.axis, xs.elements)

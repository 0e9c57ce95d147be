"""Channel rules for ops that move data: Transpose, Squeeze / Unsqueeze, Flatten, Reshape, Concat,
Split, Slice, Shape, and per-tensor QuantizeLinear / DequantizeLinear.

Registered into `handlers.RULES` on import; see `handlers.py` for the rule contract.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx_ir as ir

from onnxpress.passes.pruning.handlers import MULTI_INPUT_RULES, HandlerContext, rule
from onnxpress.passes.pruning.rules_compute import _broadcasting


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


MULTI_INPUT_RULES.add(_concat)


@rule("Split")
def _split(ctx: HandlerContext, node: ir.Node) -> None:
    found = ctx.slot_and_rank(node)
    if found is None:
        return
    xs, r = found
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
    found = ctx.slot_and_rank(node)
    if found is None:
        return
    xs, r = found
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

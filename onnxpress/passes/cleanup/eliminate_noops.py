"""`eliminate-noops`: remove nodes whose output is exactly their (first) input."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import onnx_ir as ir

from onnxpress.passes.base import Pass, PassResult
from onnxpress.passes.cleanup import _util as u
from onnxpress.passes.registry import register_pass

logger = logging.getLogger(__name__)

_Check = Callable[[ir.Node, int], "ir.Value | None"]


def _arith_identity(node: ir.Node, opset: int) -> ir.Value | None:
    # x+0, 0+x, x-0, x*1, 1*x, x/1: only when the constant cannot change x's shape or dtype.
    if len(node.inputs) != 2 or u.has_ref_attrs(node):
        return None
    neutral = 0 if node.op_type in ("Add", "Sub") else 1
    commutes = node.op_type in ("Add", "Mul")
    for x_index in (0, 1) if commutes else (0,):
        x, c = node.inputs[x_index], node.inputs[1 - x_index]
        array = u.const_array(c)
        shape = u.dims(x)
        if x is None or array is None or array.dtype == object or not np.all(array == neutral):
            continue
        if c.dtype is not None and x.dtype is not None and c.dtype != x.dtype:
            continue
        # A scalar never changes the shape; anything else needs x's rank at least.
        if array.ndim == 0 or (shape is not None and u.broadcast_keeps_shape(shape, array.shape)):
            return x
    return None


def _single_input(node: ir.Node, opset: int) -> ir.Value | None:
    # Sum/Mean/Max/Min of one tensor, Concat of one piece.
    inputs = [v for v in node.inputs]
    return inputs[0] if len(inputs) == 1 and inputs[0] is not None else None


def _split_one(node: ir.Node, opset: int) -> ir.Value | None:
    if len(node.outputs) != 1 or node.inputs[0] is None:
        return None
    return node.inputs[0]


def _dropout(node: ir.Node, opset: int) -> ir.Value | None:
    # Opset < 7 Dropout has is_test (training by default); from 12 on training_mode is an input.
    if opset < 7 or any(not u.unused(v) for v in node.outputs[1:]):
        return None
    if opset >= 12 and len(node.inputs) > 2 and node.inputs[2] is not None:
        training = u.const_array(node.inputs[2])
        if training is None or bool(training.reshape(-1)[0]):
            return None
    return node.inputs[0]


def _cast(node: ir.Node, opset: int) -> ir.Value | None:
    x = node.inputs[0]
    attr = node.attributes.get("to")
    if x is None or x.dtype is None or attr is None or attr.is_ref():
        return None
    return x if attr.as_int() == x.dtype.value else None


def _cast_like(node: ir.Node, opset: int) -> ir.Value | None:
    x, like = node.inputs[0], node.inputs[1]
    if x is None or like is None or x.dtype is None or x.dtype != like.dtype:
        return None
    return x


def _reshape(node: ir.Node, opset: int) -> ir.Value | None:
    x = node.inputs[0]
    target = u.const_array(node.inputs[1]) if len(node.inputs) > 1 else None
    shape = u.dims(x)
    if target is None or shape is None or target.ndim != 1 or len(target) != len(shape):
        return None
    allowzero = u.attr_int(node, "allowzero", 0)
    inferred = []
    for i, (want, have) in enumerate(zip(target.tolist(), shape)):
        if want == 0 and not allowzero:
            continue  # copies the input dim
        if want == -1:
            inferred.append(i)
            continue
        if have is None or want != have:
            return None
    if len(inferred) > 1:
        return None
    if inferred:
        # -1 is the input's own dim only if every other dim matches and the element count is known
        # non-zero (Reshape cannot infer -1 from an empty tensor).
        others = [shape[i] for i in range(len(shape)) if i != inferred[0]]
        if any(d is None or d == 0 for d in others):
            return None
    return x


def _transpose(node: ir.Node, opset: int) -> ir.Value | None:
    x = node.inputs[0]
    perm = u.attr_ints(node, "perm")
    if node.attributes.get("perm") is not None and perm is None:
        return None  # a reference attribute
    if perm is None:
        shape = u.dims(x)
        return x if shape is not None and len(shape) <= 1 else None
    return x if perm == list(range(len(perm))) else None


def _expand(node: ir.Node, opset: int) -> ir.Value | None:
    x = node.inputs[0]
    target = u.const_array(node.inputs[1])
    shape = u.dims(x)
    if target is None or shape is None or target.ndim != 1:
        return None
    return x if u.broadcast_keeps_shape(shape, [int(t) for t in target]) else None


def _slice(node: ir.Node, opset: int) -> ir.Value | None:
    x = node.inputs[0]
    shape = u.dims(x)
    if x is None or shape is None:
        return None
    if opset < 10:
        starts, ends, axes = u.attr_ints(node, "starts"), u.attr_ints(node, "ends"), u.attr_ints(node, "axes")
        steps: list[int] | None = None
        if starts is None or ends is None:
            return None
    else:
        arrays = [u.const_array(v) if v is not None else None for v in node.inputs[1:]]
        arrays += [None] * (4 - len(arrays))
        if arrays[0] is None or arrays[1] is None:
            return None
        starts, ends = arrays[0].tolist(), arrays[1].tolist()
        if len(node.inputs) > 3 and node.inputs[3] is not None and arrays[2] is None:
            return None
        if len(node.inputs) > 4 and node.inputs[4] is not None and arrays[3] is None:
            return None
        axes = arrays[2].tolist() if arrays[2] is not None else None
        steps = arrays[3].tolist() if arrays[3] is not None else None
    if axes is None:
        axes = list(range(len(starts)))
    steps = steps if steps is not None else [1] * len(starts)
    if not (len(starts) == len(ends) == len(axes) == len(steps)):
        return None
    rank = len(shape)
    for start, end, axis, step in zip(starts, ends, axes, steps):
        if step != 1 or not -rank <= axis < rank:
            return None
        dim = shape[axis]
        if dim is None:
            if not (start == 0 or start <= -u.HUGE) or end < u.HUGE:
                return None
            continue
        start = start + dim if start < 0 else start
        end = end + dim if end < 0 else end
        if max(start, 0) != 0 or min(end, dim) != dim:
            return None
    return x


def _pad(node: ir.Node, opset: int) -> ir.Value | None:
    x = node.inputs[0]
    if opset < 11:
        pads = u.attr_ints(node, "pads") or u.attr_ints(node, "paddings")
        return x if pads is not None and not any(pads) else None
    array = u.const_array(node.inputs[1]) if len(node.inputs) > 1 else None
    return x if array is not None and not np.any(array) else None


def _flatten(node: ir.Node, opset: int) -> ir.Value | None:
    x = node.inputs[0]
    shape = u.dims(x)
    if shape is None or len(shape) != 2:
        return None
    axis = u.attr_int(node, "axis", 1)
    return x if axis in (1, -1) else None


def _squeeze(node: ir.Node, opset: int) -> ir.Value | None:
    # Squeeze without axes on a tensor that certainly has no dim of size 1.
    x = node.inputs[0]
    shape = u.static_dims(x)
    has_axes = (len(node.inputs) > 1 and node.inputs[1] is not None) or "axes" in node.attributes
    if shape is None or has_axes or 1 in shape:
        return None
    return x


_CHECKS: dict[str, _Check] = {
    "Add": _arith_identity,
    "Sub": _arith_identity,
    "Mul": _arith_identity,
    "Div": _arith_identity,
    "Sum": _single_input,
    "Mean": _single_input,
    "Max": _single_input,
    "Min": _single_input,
    "Concat": _single_input,
    "Split": _split_one,
    "Dropout": _dropout,
    "Cast": _cast,
    "CastLike": _cast_like,
    "Reshape": _reshape,
    "Transpose": _transpose,
    "Expand": _expand,
    "Slice": _slice,
    "Pad": _pad,
    "Flatten": _flatten,
    "Squeeze": _squeeze,
}


@register_pass
class EliminateNoopsPass(Pass):
    """Remove no-op nodes: their output is their input, bit for bit.

    Applies to (default domain only): Add/Sub of 0 and Mul/Div by 1 (any constant whose every
    element is the neutral value, when broadcasting certainly keeps the input's shape and dtype),
    Dropout in inference (opset >= 7, training_mode absent or constant false, mask unused), Cast and
    CastLike to the input's own type, Reshape to the input's own shape, identity Transpose, Expand
    to a shape the input already has, Slice covering everything with step 1, Pad with all-zero
    pads, Flatten of a 2-D tensor along axis 1, Squeeze of a static shape without 1s, and
    Sum/Mean/Max/Min/Concat of one input, Split into one piece.

    Works in subgraphs and model-local functions. Does not apply when a shape or dtype that the
    check needs is unknown (run `infer-shapes` first), to nodes with reference attributes, or to
    custom-domain nodes. A no-op whose output is a graph output becomes an Identity (the name must
    stay); `eliminate-identity` removes it where it can. Note that `x + 0` turns -0.0 into +0.0;
    that sign of zero is the one thing this pass may change.
    """

    name = "eliminate-noops"

    def run(self, model: ir.Model, am: Any) -> PassResult:
        opset = u.default_opset(model)
        removed = 0
        for graph in list(u.all_graphs(model)):
            for node in list(graph):
                check = _CHECKS.get(node.op_type)
                if check is None or node.domain not in ("", "ai.onnx") or not node.outputs:
                    continue
                if node.op_type == "Identity":
                    continue
                source = check(node, opset)
                if source is None:
                    continue
                if node.op_type != "Dropout" and len(node.outputs) != 1:
                    continue
                logger.debug("removing no-op %s %s", node.op_type, node.name)
                u.bypass(node, source)
                removed += 1
        if removed:
            logger.info("eliminate-noops removed %d no-op node(s)", removed)
        return PassResult(model, removed > 0, {"removed": removed})

"""`eliminate-reshapes`: a Reshape or Flatten fed by another shape-only op reads its source."""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import onnx_ir as ir

from onnxpress.passes.base import Pass, PassResult
from onnxpress.passes.cleanup import _util as u
from onnxpress.passes.registry import register_pass

logger = logging.getLogger(__name__)

#: ops that only reinterpret the shape; row-major element order is unchanged.
_SHAPE_ONLY = ("Reshape", "Flatten", "Squeeze", "Unsqueeze")


def _resolved_target(node: ir.Node, middle: ir.Value) -> np.ndarray | None:
    """The Reshape's target with every "copy this dim" 0 replaced by the dim it copies."""
    target = u.const_array(node.inputs[1])
    if target is None or target.ndim != 1 or target.dtype != np.int64:
        return None
    if u.attr_int(node, "allowzero", 0) or not np.any(target == 0):
        return target
    mid = u.dims(middle)
    if mid is None:
        return None
    resolved = target.copy()
    for i in np.flatnonzero(target == 0):
        if i >= len(mid) or mid[i] is None or mid[i] == 0:
            return None
        resolved[i] = mid[i]
    return resolved


def _flatten_dims(node: ir.Node, middle: ir.Value) -> list[int] | None:
    out = u.static_dims(node.outputs[0])
    if out is not None and len(out) == 2:
        return out
    mid = u.static_dims(middle)
    if mid is None:
        return None
    axis = u.attr_int(node, "axis", 1)
    axis = axis + len(mid) if axis < 0 else axis
    return [math.prod(mid[:axis]), math.prod(mid[axis:])]


@register_pass
class EliminateReshapesPass(Pass):
    """Skip shape-only producers: `Reshape(Reshape|Flatten|Squeeze|Unsqueeze(x), s)` becomes
    `Reshape(x, s)`, and `Flatten(<shape-only>(x))` becomes `Reshape(x, [a, b])`.

    Applies when the outer Reshape's target is a constant int64 vector; a `0` in it ("copy the
    input dim", allowzero 0) is replaced by the middle tensor's static dim (a new initializer), and
    a Flatten needs its 2-D output shape statically. The middle node stays while something else
    uses it. Chains collapse in one run (nodes are visited in order). Works in subgraphs; in
    model-local functions only rewires that need no new constant are done.

    Does not apply to dynamic targets, zero-size dims, or custom-domain nodes. A Reshape that ends
    up at the input's own shape is removed by `eliminate-noops`.
    """

    name = "eliminate-reshapes"

    def run(self, model: ir.Model, am: Any) -> PassResult:
        if u.default_opset(model) < 5:
            return PassResult(model, False, {"simplified": 0})
        names = u.NameScope(model)
        changed = 0
        for graph in list(u.all_graphs(model)):
            is_graph = isinstance(graph, ir.Graph)
            for node in list(graph):
                if not u.is_onnx_op(node, "Reshape", "Flatten") or node.inputs[0] is None:
                    continue
                middle = node.inputs[0]
                producer = middle.producer()
                if producer is None or not u.is_onnx_op(producer, *_SHAPE_ONLY) or producer.inputs[0] is None:
                    continue
                if u.has_ref_attrs(node) or u.has_ref_attrs(producer):
                    continue
                x = producer.inputs[0]
                if node.op_type == "Reshape":
                    target = _resolved_target(node, middle)
                    if target is None:
                        continue
                    if not np.array_equal(target, u.const_array(node.inputs[1])):
                        if not is_graph:
                            continue
                        node.replace_input_with(1, u.new_initializer(graph, names, f"{node.outputs[0].name}_shape", target))
                    node.replace_input_with(0, x)
                else:
                    flat = _flatten_dims(node, middle)
                    if flat is None or 0 in flat or not is_graph:
                        continue
                    shape = u.new_initializer(graph, names, f"{node.outputs[0].name}_shape", np.array(flat, np.int64))
                    u.replace_node([node], "Reshape", [x, shape], {}, node.outputs[0])
                changed += 1
        if changed:
            logger.info("eliminate-reshapes skipped %d shape-only producer(s)", changed)
        return PassResult(model, changed > 0, {"simplified": changed})

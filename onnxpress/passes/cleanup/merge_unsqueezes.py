"""`merge-unsqueezes`: Unsqueeze(Unsqueeze(x, a1), a2) -> Unsqueeze(x, a)."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import onnx_ir as ir

from onnxpress.passes.base import Pass, PassResult
from onnxpress.passes.cleanup import _util as u
from onnxpress.passes.registry import register_pass

logger = logging.getLogger(__name__)


def _merged_axes(rank: int, inner: list[int], outer: list[int]) -> list[int] | None:
    """Where the new 1-dims of both Unsqueezes end up, or None for invalid axes.

    Simulated on labels: x's dims are True, inserted dims False.
    """
    dims = [True] * rank
    for axes in (inner, outer):
        out_rank = len(dims) + len(axes)
        normal = sorted(a + out_rank if a < 0 else a for a in axes)
        if len(set(normal)) != len(normal) or any(not 0 <= a < out_rank for a in normal):
            return None
        source = iter(dims)
        dims = [False if i in normal else next(source) for i in range(out_rank)]
    return [i for i, kept in enumerate(dims) if not kept]


@register_pass
class MergeUnsqueezesPass(Pass):
    """Merge two stacked Unsqueezes into one: `Unsqueeze(Unsqueeze(x, [1, 2]), [3])` is
    `Unsqueeze(x, [1, 2, 3])`.

    Applies when both axes are constant (attribute before opset 13, input from 13 on) and x's rank
    is known (run `infer-shapes` first). The inner Unsqueeze stays while something else uses it.
    Main graph and subgraphs; model-local functions only below opset 13 (from 13 on the axes are
    a new constant, which a function could only hold as a Constant node).
    """

    name = "merge-unsqueezes"

    def run(self, model: ir.Model, am: Any) -> PassResult:
        opset = u.default_opset(model)
        names = u.NameScope(model)
        merged = 0
        # From opset 13 the merged axes are a new initializer: only graphs outside functions.
        graphs = [model.graph, *model.graph.subgraphs()] if opset >= 13 else list(u.all_graphs(model))
        for graph in graphs:
            for node in list(graph):
                if not u.is_onnx_op(node, "Unsqueeze") or node.inputs[0] is None or u.has_ref_attrs(node):
                    continue
                inner = node.inputs[0].producer()
                if inner is None or not u.is_onnx_op(inner, "Unsqueeze") or u.has_ref_attrs(inner):
                    continue
                x = inner.inputs[0]
                inner_axes, outer_axes = u.unsqueeze_axes(inner), u.unsqueeze_axes(node)
                if x is None or inner_axes is None or outer_axes is None:
                    continue
                shape = u.dims(x)
                axes = None if shape is None else _merged_axes(len(shape), inner_axes, outer_axes)
                if axes is None:
                    continue
                if opset >= 13:
                    axes_value = u.new_initializer(graph, names, f"{node.outputs[0].name}_axes", np.array(axes, np.int64))
                    u.replace_node([node], "Unsqueeze", [x, axes_value], {}, node.outputs[0])
                else:
                    u.replace_node([node], "Unsqueeze", [x], {"axes": ir.AttrInt64s("axes", axes)}, node.outputs[0])
                merged += 1
        if merged:
            logger.info("merge-unsqueezes merged %d Unsqueeze pair(s)", merged)
        return PassResult(model, merged > 0, {"merged": merged})

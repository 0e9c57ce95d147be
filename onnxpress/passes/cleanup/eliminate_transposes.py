"""`eliminate-transposes`: Transpose(Transpose(x)) -> one Transpose, or none."""

from __future__ import annotations

import logging
from typing import Any

import onnx_ir as ir

from onnxpress.passes.base import Pass, PassResult
from onnxpress.passes.cleanup import _util as u
from onnxpress.passes.registry import register_pass

logger = logging.getLogger(__name__)


def _perm(node: ir.Node, rank: int | None) -> list[int] | None:
    """The node's permutation; the default (reverse the axes) needs the rank."""
    attr = node.attributes.get("perm")
    if attr is not None:
        return None if attr.is_ref() else list(attr.as_ints())
    return None if rank is None else list(reversed(range(rank)))


@register_pass
class EliminateTransposesPass(Pass):
    """Compose consecutive Transposes: `Transpose(Transpose(x, p1), p2)` becomes
    `Transpose(x, p1[p2])`, or just `x` when the composition is the identity.

    Applies to chains of any length (nodes are visited in order, so each Transpose composes with an
    already simplified one), in subgraphs and model-local functions. The first Transpose stays as
    long as something else uses it (`dce` removes it otherwise). Does not apply when a permutation
    is a function reference attribute, or when a missing `perm` meets an unknown rank.
    """

    name = "eliminate-transposes"

    def run(self, model: ir.Model, am: Any) -> PassResult:
        changed = 0
        for graph in list(u.all_graphs(model)):
            for node in list(graph):
                if not u.is_onnx_op(node, "Transpose") or node.inputs[0] is None:
                    continue
                first = node.inputs[0].producer()
                if first is None or not u.is_onnx_op(first, "Transpose") or first.inputs[0] is None:
                    continue
                x = first.inputs[0]
                rank = len(x.shape) if x.shape is not None else None
                p1 = _perm(first, rank)
                p2 = _perm(node, rank if rank is not None else (len(p1) if p1 is not None else None))
                if p1 is None or p2 is None or len(p1) != len(p2):
                    continue
                combined = [p1[i] for i in p2]
                if combined == list(range(len(combined))):
                    u.bypass(node, x)
                else:
                    node.replace_input_with(0, x)
                    node.attributes["perm"] = ir.AttrInt64s("perm", combined)
                changed += 1
        if changed:
            logger.info("eliminate-transposes simplified %d Transpose pair(s)", changed)
        return PassResult(model, changed > 0, {"simplified": changed})

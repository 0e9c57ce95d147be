"""The residual stream of a transformer, which quantization leaves in float.

`residual_stream_adds` finds the Adds whose sum only a norm reads and the bias Adds feeding them;
`reassociable_bias_add` finds where `(m + b) + r` can become `(m + r) + b`, so that ONNX Runtime
keeps the MatMul integer with a float output instead of fusing it with its bias into a float Gemm.
Used by `placement.place`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import onnx_ir as ir

from onnxpress.passes.cleanup import _util as u
from onnxpress.passes.quantize.rules import feeds_bias_add

__all__ = ["NORM_READERS", "reassociable_bias_add", "residual_stream_adds"]

#: Ops that read a residual stream to normalise it (a decomposed LayerNorm starts ReduceMean + Sub).
NORM_READERS = frozenset({"LayerNormalization", "SimplifiedLayerNormalization", "RMSNormalization",
                          "SkipLayerNormalization", "GroupNormalization", "InstanceNormalization", "ReduceMean", "Sub"})


def residual_stream_adds(graphs: Iterable[ir.Graph], excluded: Callable[[ir.Node], bool]) -> set[ir.Node]:
    """Adds whose sum only a norm reads (a transformer's residual stream), and the single-use Adds
    feeding them (the bias Add before the residual Add).

    Residual streams carry a few outlier channels far above the rest (Kovaleva et al. 2021; Dettmers
    et al. 2022, LLM.int8()): one per-tensor scale spends the 8 bits on them and rounds every
    other channel away. These Adds are cheap in float (ORT fuses Add + LayerNorm), so they stay float."""
    out: set[ir.Node] = set()
    for graph in graphs:
        for node in graph:
            if not u.is_onnx_op(node, "Add") or excluded(node) or node.outputs[0].is_graph_output():
                continue
            readers = [use.node for use in node.outputs[0].uses()]
            if readers and all(u.is_onnx_op(r, *NORM_READERS) for r in readers) \
                    and any(not u.is_onnx_op(r, "Sub") for r in readers):
                out.add(node)
    frontier = list(out)
    while frontier:  # single-use Adds feeding a residual Add belong to the stream too
        node = frontier.pop()
        for value in node.inputs:
            producer = value.producer() if value is not None else None
            if producer is not None and producer not in out and u.is_onnx_op(producer, "Add") \
                    and not excluded(producer) and len(value.uses()) == 1 and not value.is_graph_output():
                out.add(producer)
                frontier.append(producer)
    return out


def reassociable_bias_add(node: ir.Node, residual: set[ir.Node], order: Mapping[ir.Node, int]) -> ir.Node | None:
    """For a MatMul -> bias Add A -> residual Add R (both float): A, when `(m + b) + r` can become
    `(m + r) + b`. Then ORT sees MatMul -> Add(m, r), keeps the MatMul integer with a float output
    (MatMulIntegerToFloat) instead of fusing MatMul + bias into a float Gemm, and the MatMul needs no
    Q on its output, so the residual stream is never rounded to 8 bits."""
    if not feeds_bias_add(node):
        return None
    bias_add = next(iter(node.outputs[0].uses())).node
    if bias_add not in residual or bias_add.outputs[0].is_graph_output() or len(bias_add.outputs[0].uses()) != 1:
        return None
    other = next(iter(bias_add.outputs[0].uses())).node
    if other not in residual or other.graph is not bias_add.graph:
        return None
    rest = [v for v in other.inputs if v is not bias_add.outputs[0]]
    if len(rest) != 1 or rest[0] is None or u.const_array(rest[0]) is not None:
        return None
    if rest[0].shape != bias_add.outputs[0].shape:  # r must not broadcast A's output to a new shape
        return None
    producer = rest[0].producer()
    if producer is not None and (producer.graph is not bias_add.graph or order[producer] > order[bias_add]):
        return None  # r must exist before A reads it
    return bias_add

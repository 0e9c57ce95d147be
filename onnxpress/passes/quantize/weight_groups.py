"""The constant weights weight-only quantization works on: found, grouped by tensor, dropped when unused.

`weight_groups` collects every constant 2-D float weight read by MatMul (and, when asked, Gather
tables and Gemm B) in the main graph, one `WeightGroup` per tensor with all the nodes that read
it, so a shared weight is quantized once; a weight with any other reader is skipped with a reason.
Used by `quantize-weights` and `quantize-dynamic`.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from collections.abc import Iterable

import numpy as np
import onnx_ir as ir

from onnxpress.passes.cleanup import _util as u

__all__ = ["FLOAT_TYPES", "WeightGroup", "drop_if_unused", "weight_groups"]

logger = logging.getLogger(__name__)

FLOAT_TYPES = (ir.DataType.FLOAT, ir.DataType.FLOAT16)


# ----------------------------------------------------------------------------------------------
# Finding the weights
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass(eq=False)
class WeightGroup:
    """One constant weight and the nodes that read it (MatMul input 1, or Gather input 0)."""

    weight: ir.Value
    array: np.ndarray  # float64, [K, N] for MatMul, [V, D] for Gather
    kind: str  # "matmul" | "gemm" | "gather"
    users: list[ir.Node]

    @property
    def index(self) -> int:
        return 0 if self.kind == "gather" else 1

    @property
    def name(self) -> str:
        return self.weight.name or (self.users[0].name or "")


def _gather_axis(node: ir.Node) -> int:
    return u.attr_int(node, "axis", 0)


def weight_groups(model: ir.Model, *, matmul: bool = True, gather: bool = False, gemm: bool = False,
                  exclude: Iterable[str] = (), skipped: Counter[str] | None = None) -> list[WeightGroup]:
    """The main graph's constant 2-D float weights read only by MatMul (input 1), Gemm (input 1,
    with `gemm=True`) or Gather (input 0, axis 0, with `gather=True`), grouped by weight.

    Reasons for the nodes left out are counted in `skipped`."""
    skipped = skipped if skipped is not None else Counter()
    excluded = set(exclude)
    for graph in u.all_graphs(model):
        if graph is not model.graph:
            nested = sum(1 for node in graph if u.is_onnx_op(node, "MatMul", "Gemm", "Gather"))
            if nested:
                skipped["in a subgraph or function"] += nested
    found: dict[int, WeightGroup] = {}
    for node in model.graph:
        if matmul and u.is_onnx_op(node, "MatMul"):
            kind, index = "matmul", 1
        elif gemm and u.is_onnx_op(node, "Gemm"):
            kind, index = "gemm", 1
        elif gather and u.is_onnx_op(node, "Gather") and _gather_axis(node) == 0:
            kind, index = "gather", 0
        else:
            continue
        if node.name in excluded:
            skipped["excluded"] += 1
            continue
        weight = node.inputs[index] if len(node.inputs) > index else None
        array = u.const_array(weight)
        reason = None
        if weight is None or array is None:
            reason = "dynamic weight"
        elif array.ndim != 2:
            reason = f"{array.ndim}-D weight"
        elif weight.dtype not in FLOAT_TYPES:
            reason = "non-float weight"
        elif u.has_ref_attrs(node):
            reason = "function attribute references"
        if reason is not None:
            logger.debug("%s '%s' skipped: %s", node.op_type, node.name, reason)
            skipped[reason] += 1
            continue
        assert weight is not None and array is not None
        group = found.get(id(weight))
        if group is None:
            found[id(weight)] = WeightGroup(weight, np.asarray(array, dtype=np.float64), kind, [node])
        elif group.kind != kind:
            group.kind = "mixed"
        else:
            group.users.append(node)
    groups = []
    for group in found.values():
        reason = None
        if group.kind == "mixed":
            reason = "weight read by different op types"
        elif group.weight.is_graph_output():
            reason = "weight is a graph output"
        elif any(use.node not in group.users or use.idx != group.index for use in group.weight.uses()):
            reason = "weight read by other nodes"
        if reason is not None:
            skipped[reason] += len(group.users)
            continue
        groups.append(group)
    return groups


def drop_if_unused(graph: ir.Graph, value: ir.Value) -> None:
    """Remove a weight nothing reads any more: its initializer, or the Constant node making it."""
    if value.uses() or value.is_graph_output():
        return
    if value.name in graph.initializers and graph.initializers[value.name] is value:
        graph.initializers.pop(value.name)
        return
    producer = value.producer()
    if producer is not None and producer.op_type == "Constant" and producer.graph is graph:
        graph.remove(producer, safe=True)

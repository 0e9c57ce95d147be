"""The cost model: parameters, parameter bytes and multiply-accumulates per node and per model.

MACs are counted for the linear ops (Conv, ConvTranspose, Gemm, MatMul and their integer / QLinear
forms) from the shapes recorded on values; other ops count zero MACs. A dim that is unknown or
symbolic counts as 1 and marks the result `exact=False`, so a report can say "at least". Params are
the elements of constant (initializer) inputs. Nothing here reads tensor data: sizes come from
dtype and shape, so lazy and memory-mapped weights stay on disk.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Sequence

import onnx_ir as ir

from onnxpress.ir.graph import all_graphs

__all__ = ["ModelCost", "NodeCost", "model_cost", "node_cost"]

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class NodeCost:
    params: int = 0
    param_bytes: int = 0
    macs: int = 0
    exact: bool = True


@dataclasses.dataclass
class ModelCost:
    nodes: int
    params: int
    param_bytes: int
    macs: int
    exact: bool
    #: op type -> {"count": nodes, "macs": MACs, "params": params read by those nodes}
    by_op: dict[str, dict] = dataclasses.field(default_factory=dict)


class _Dims:
    """Reads dims of a value; unknown ones read as 1 and are remembered as inexact."""

    def __init__(self) -> None:
        self.exact = True

    def of(self, value: ir.Value | None) -> list[int] | None:
        if value is None:
            self.exact = False
            return None
        shape = value.shape
        if shape is None and value.const_value is not None:
            shape = value.const_value.shape
        if shape is None:
            self.exact = False
            return None
        dims = []
        for d in shape:
            if isinstance(d, int):
                dims.append(d)
            else:
                self.exact = False
                dims.append(1)
        return dims


def _input(node: ir.Node, index: int) -> ir.Value | None:
    return node.inputs[index] if index < len(node.inputs) else None


def _attr_ints(node: ir.Node, name: str, default: Sequence[int]) -> list[int]:
    """An INTS (or INT) attribute; references to function attributes read as the default."""
    attr = node.attributes.get(name)
    if attr is None or attr.is_ref():
        return list(default)
    if attr.type == ir.AttributeType.INT:
        return [attr.as_int()]
    return list(attr.as_ints())


def _conv_out_spatial(node: ir.Node, x: list[int], w: list[int]) -> list[int]:
    """Output spatial dims of a Conv from its input and kernel when the output shape is unknown."""
    spatial = x[2:]
    kernel = w[2:]
    n = len(spatial)
    strides = _attr_ints(node, "strides", [1] * n)
    dilations = _attr_ints(node, "dilations", [1] * n)
    pads = _attr_ints(node, "pads", [0] * (2 * n))
    auto_pad = node.attributes.get("auto_pad")
    mode = auto_pad.as_string() if auto_pad is not None and not auto_pad.is_ref() else "NOTSET"
    out = []
    for i in range(n):
        if mode in ("SAME_UPPER", "SAME_LOWER"):
            out.append(math.ceil(spatial[i] / strides[i]))
        else:
            pad = 0 if mode == "VALID" else pads[i] + pads[i + n]
            span = dilations[i] * (kernel[i] - 1) + 1
            out.append(max((spatial[i] + pad - span) // strides[i] + 1, 0))
    return out


def _conv_macs(node: ir.Node, x_index: int, w_index: int, dims: _Dims) -> int:
    # MACs = N * M * prod(out spatial) * (C / group) * prod(kernel); W is [M, C/group, k...].
    w = dims.of(_input(node, w_index))
    if w is None:
        return 0
    y = dims.of(node.outputs[0]) if node.outputs[0].shape is not None else None
    if y is None or len(y) != len(w):
        x = dims.of(_input(node, x_index))
        if x is None or len(x) != len(w):
            dims.exact = False
            return 0
        y = [x[0], w[0], *_conv_out_spatial(node, x, w)]
    return y[0] * math.prod(y[1:]) * math.prod(w[1:])


def _conv_transpose_macs(node: ir.Node, dims: _Dims) -> int:
    # Every input element is multiplied into (M / group) * prod(kernel) outputs; W is [C, M/g, k...].
    x = dims.of(_input(node, 0))
    w = dims.of(_input(node, 1))
    if x is None or w is None:
        return 0
    return x[0] * math.prod(x[2:]) * math.prod(w)


def _gemm_macs(node: ir.Node, dims: _Dims) -> int:
    a = dims.of(_input(node, 0))
    b = dims.of(_input(node, 1))
    if a is None or b is None or len(a) != 2 or len(b) != 2:
        dims.exact = False
        return 0
    trans_a = _attr_ints(node, "transA", [0])[0]
    trans_b = _attr_ints(node, "transB", [0])[0]
    m, k = (a[1], a[0]) if trans_a else (a[0], a[1])
    n = b[0] if trans_b else b[1]
    return m * k * n


def _matmul_macs(node: ir.Node, a_index: int, b_index: int, dims: _Dims) -> int:
    # numpy matmul semantics: 1-D operands are promoted, batch dims broadcast.
    a = dims.of(_input(node, a_index))
    b = dims.of(_input(node, b_index))
    if a is None or b is None or not a or not b:
        dims.exact = False
        return 0
    if len(a) == 1:
        a = [1, *a]
    if len(b) == 1:
        b = [*b, 1]
    m, k, n = a[-2], a[-1], b[-1]
    batch_a, batch_b = a[:-2], b[:-2]
    rank = max(len(batch_a), len(batch_b))
    batch_a = [1] * (rank - len(batch_a)) + batch_a
    batch_b = [1] * (rank - len(batch_b)) + batch_b
    batch = math.prod(max(x, y) for x, y in zip(batch_a, batch_b))
    return batch * m * k * n


_MACS = {
    "Conv": lambda node, dims: _conv_macs(node, 0, 1, dims),
    "ConvInteger": lambda node, dims: _conv_macs(node, 0, 1, dims),
    "QLinearConv": lambda node, dims: _conv_macs(node, 0, 3, dims),
    "ConvTranspose": _conv_transpose_macs,
    "Gemm": _gemm_macs,
    "MatMul": lambda node, dims: _matmul_macs(node, 0, 1, dims),
    "MatMulInteger": lambda node, dims: _matmul_macs(node, 0, 1, dims),
    "QLinearMatMul": lambda node, dims: _matmul_macs(node, 0, 3, dims),
}


def _is_param(value: ir.Value | None) -> bool:
    return value is not None and value.is_initializer() and value.const_value is not None


def node_cost(node: ir.Node) -> NodeCost:
    """Params (elements of initializer inputs), their bytes, and MACs of one node."""
    params = param_bytes = 0
    for value in node.inputs:
        if _is_param(value):
            params += value.const_value.size
            param_bytes += value.const_value.nbytes
    macs = 0
    dims = _Dims()
    counter = _MACS.get(node.op_type) if node.domain in ("", "ai.onnx") else None
    if counter is not None:
        macs = counter(node, dims)
    return NodeCost(params=params, param_bytes=param_bytes, macs=macs, exact=dims.exact)


def model_cost(model: ir.Model) -> ModelCost:
    """Totals over every node (subgraph nodes included) and every initializer, counted once.

    Parameters are the elements of every initializer and of every tensor-valued Constant node.

    Calls to model-local functions count as one node each; their bodies are not expanded.
    """
    nodes = macs = 0
    exact = True
    by_op: dict[str, dict] = {}
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        cost = node_cost(node)
        nodes += 1
        macs += cost.macs
        exact &= cost.exact
        key = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}"
        entry = by_op.setdefault(key, {"count": 0, "macs": 0, "params": 0})
        entry["count"] += 1
        entry["macs"] += cost.macs
        entry["params"] += cost.params

    seen: set[int] = set()
    params = param_bytes = 0
    for graph in all_graphs(model):
        if not isinstance(graph, ir.Graph):
            continue
        for value in graph.initializers.values():
            tensor = value.const_value
            if tensor is None or id(tensor) in seen:
                continue
            seen.add(id(tensor))
            params += tensor.size
            param_bytes += tensor.nbytes
    # Exporters such as paddle2onnx store weights as Constant nodes: they are parameters too.
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            attr = node.attributes.get("value")
            tensor = attr.value if attr is not None and attr.type == ir.AttributeType.TENSOR else None
            if tensor is not None and id(tensor) not in seen:
                seen.add(id(tensor))
                params += tensor.size
                param_bytes += tensor.nbytes
    return ModelCost(nodes=nodes, params=params, param_bytes=param_bytes, macs=macs, exact=exact, by_op=by_op)

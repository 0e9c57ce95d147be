"""Small IR helpers shared by the clean-up passes: constants, shapes, rewiring, new weights.

Everything here is read-only except `bypass`, `replace_node` and `new_initializer`, which perform
the standard mutations (forward a value, swap a node for a rebuilt one, add a weight) the same way
in every pass, so that graph-output names and value shapes/types are always kept.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx_ir as ir

from onnxpress.ir.graph import all_graphs  # noqa: F401 - re-exported for the passes

logger = logging.getLogger(__name__)

#: dims / slice bounds at or beyond this magnitude mean "to the end" in practice.
HUGE = 1 << 62


# -- walking (all_graphs: onnxpress.ir.graph) ------------------------------------------------
def default_opset(model: ir.Model) -> int:
    """The model's ONNX default-domain opset version (subgraphs inherit it)."""
    return model.opset_imports.get("", model.graph.opset_imports.get("", 1))


def is_onnx_op(node: ir.Node, *op_types: str) -> bool:
    """True for a default-domain node of one of `op_types` (custom domains never match)."""
    return node.domain in ("", "ai.onnx") and node.op_type in op_types


# -- constants -------------------------------------------------------------------------------
def const_array(value: ir.Value | None) -> np.ndarray | None:
    """The value's constant content as numpy, or None (graph inputs that shadow an initializer,
    i.e. overridable initializers, are not constants)."""
    if value is None or value.is_graph_input():
        return None
    try:
        tensor = ir.convenience.get_const_tensor(value)
        return None if tensor is None else tensor.numpy()
    except Exception:  # external data missing, odd Constant node ...: not a usable constant
        logger.debug("constant of %s is not readable", value.name)
        return None


def attr_int(node: ir.Node, name: str, default: int) -> int:
    attr = node.attributes.get(name)
    if attr is None or attr.is_ref():
        return default
    return attr.as_int()


def attr_float(node: ir.Node, name: str, default: float) -> float:
    attr = node.attributes.get(name)
    if attr is None or attr.is_ref():
        return default
    return attr.as_float()


def attr_ints(node: ir.Node, name: str) -> list[int] | None:
    attr = node.attributes.get(name)
    if attr is None or attr.is_ref():
        return None
    return list(attr.as_ints())


def unsqueeze_axes(node: ir.Node) -> list[int] | None:
    """Squeeze/Unsqueeze axes: the attribute (opset < 13) or the constant input; None if neither."""
    if "axes" in node.attributes:
        return attr_ints(node, "axes")
    if len(node.inputs) > 1 and node.inputs[1] is not None:
        array = const_array(node.inputs[1])
        return None if array is None else [int(a) for a in array.reshape(-1)]
    return None


def has_ref_attrs(node: ir.Node) -> bool:
    """Attributes referring to a function's attribute parameters are unknown until call time."""
    return any(attr.is_ref() for attr in node.attributes.values())


# -- shapes ----------------------------------------------------------------------------------
def dims(value: ir.Value | None) -> list[int | None] | None:
    """The value's dims with symbolic/unknown dims as None, or None when the rank is unknown."""
    if value is None or value.shape is None:
        return None
    return [d if isinstance(d, int) else None for d in value.shape]


def static_dims(value: ir.Value | None) -> list[int] | None:
    """The value's dims when all of them are known integers."""
    d = dims(value)
    if d is None or any(x is None for x in d):
        return None
    return d  # type: ignore[return-value]


def broadcast_keeps_shape(shape: Sequence[int | None], other: Sequence[int]) -> bool:
    """True when broadcasting a tensor of shape `shape` with one of static shape `other`
    certainly gives `shape` back (unknown dims only match a 1 in `other`)."""
    if len(other) > len(shape):
        return False
    for mine, theirs in zip(reversed(shape), reversed(other)):
        if theirs == 1:
            continue
        if mine is None or mine != theirs:
            return False
    return True


def only_user(value: ir.Value, node: ir.Node) -> bool:
    """True when `node` is the one and only consumer of `value` and it is no graph output."""
    if value.is_graph_output():
        return False
    users = {user for user, _ in value.uses()}
    return users == {node}


def unused(value: ir.Value | None) -> bool:
    return value is None or (not value.uses() and not value.is_graph_output())


# -- mutations -------------------------------------------------------------------------------
def bypass(node: ir.Node, source: ir.Value) -> None:
    """Make every user of `node.outputs[0]` read `source` instead, then remove `node`.

    When the output is a graph output, the node becomes an Identity (the output name must stay)
    unless `source` can simply take that name over.
    """
    graph = node.graph
    assert graph is not None
    out = node.outputs[0]
    if source.shape is None and out.shape is not None:
        source.shape = out.shape
    if source.type is None and out.type is not None:
        source.type = out.type
    if out.is_graph_output():
        identity = ir.node("Identity", [source])
        ir.convenience.replace_nodes_and_values(graph, node, [node], [identity], [out], identity.outputs)
        return
    ir.convenience.replace_all_uses_with(out, source)
    graph.remove(node, safe=True)


def replace_node(
    old_nodes: Sequence[ir.Node],
    op_type: str,
    inputs: Sequence[ir.Value | None],
    attributes: dict[str, ir.Attr],
    output: ir.Value,
    name: str | None = None,
) -> ir.Node:
    """Replace `old_nodes` (the last one produces `output`) by one rebuilt default-domain node.

    The new node keeps `output`'s name, type and shape, and `name` or the first old node's name.
    """
    last = old_nodes[-1]
    graph = last.graph
    assert graph is not None
    new = ir.Node(
        "",
        op_type,
        list(inputs),
        attributes=list(attributes.values()),
        num_outputs=1,
        name=old_nodes[0].name if name is None else name,
    )
    ir.convenience.replace_nodes_and_values(graph, last, list(old_nodes), [new], [output], new.outputs)
    return new


class NameScope:
    """Hands out value names not used anywhere in a model (SSA names are model-wide)."""

    def __init__(self, model: ir.Model) -> None:
        self._taken: set[str] = set()
        for graph in all_graphs(model):
            for value in graph.inputs:
                self._add(value)
            if isinstance(graph, ir.Graph):
                self._taken.update(graph.initializers)
            for node in graph:
                for value in node.outputs:
                    self._add(value)

    def _add(self, value: ir.Value | None) -> None:
        if value is not None and value.name:
            self._taken.add(value.name)

    def fresh(self, base: str) -> str:
        name, i = base, 0
        while name in self._taken:
            i += 1
            name = f"{base}_{i}"
        self._taken.add(name)
        return name


def new_initializer(graph: ir.Graph, names: NameScope, base: str, array: np.ndarray) -> ir.Value:
    """Register a NEW initializer holding `array` (never writes into an existing buffer)."""
    tensor = ir.Tensor(np.array(array, order="C"))  # np.ascontiguousarray would turn a scalar into [1]
    value = ir.Value(
        name=names.fresh(base),
        type=ir.TensorType(tensor.dtype),
        shape=ir.Shape(array.shape),
        const_value=tensor,
    )
    graph.register_initializer(value)
    return value


def same_dtype(array: np.ndarray, like: Any) -> np.ndarray:
    return np.asarray(array).astype(like.dtype, copy=False)

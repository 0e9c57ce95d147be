"""Building the replacement of one decomposed node, the same way in every low-rank pass.

A `Replacement` collects new weights (always new `ir.Tensor`s in the original weight's dtype) and
new default-domain nodes whose names derive from the original node's (`fc1` -> `fc1.svd_a`), with
the type and, where known, the shape of every new value set. `commit` swaps the original node for
the chain (the last value takes over the original output's name, so graph outputs keep theirs) and
drops the original weight, which nothing reads any more. Nothing touches the graph before
`commit`, so a pass can still walk away from a half-built replacement.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx_ir as ir

from onnxpress.passes.cleanup._util import NameScope

__all__ = ["Replacement", "node_names"]

Dims = Sequence[int | ir.SymbolicDim | None] | None


def node_names(graph: ir.Graph) -> set[str]:
    return {node.name for node in graph if node.name}


class Replacement:
    """New weights and nodes that will replace `node` (see the module docstring)."""

    def __init__(self, node: ir.Node, weight: ir.Value, pass_name: str, names: NameScope, taken: set[str]) -> None:
        graph = node.graph
        assert isinstance(graph, ir.Graph)
        self.graph = graph
        self.node = node
        self.weight = weight
        self.pass_name = pass_name
        self.names = names
        self.taken = taken
        self.base = node.name or node.outputs[0].name or node.op_type.lower()
        self.dtype = weight.dtype
        self.np_dtype = weight.const_value.numpy().dtype
        self.nodes: list[ir.Node] = []
        self._weights: list[ir.Value] = []

    # -- weights -------------------------------------------------------------------------------
    def weight_value(self, suffix: str, array: np.ndarray) -> ir.Value:
        """A new initializer `<weight name>.<suffix>` holding `array` in the weight's dtype."""
        data = np.array(np.asarray(array).astype(self.np_dtype), order="C")
        return self._initializer(f"{self.weight.name or self.base}.{suffix}", data)

    def ints(self, suffix: str, values: Sequence[int]) -> ir.Value:
        """A new int64 initializer (shapes for Reshape, slice bounds)."""
        return self._initializer(f"{self.base}.{suffix}", np.asarray(list(values), dtype=np.int64))

    def _initializer(self, name: str, data: np.ndarray) -> ir.Value:
        tensor = ir.Tensor(data)
        value = ir.Value(name=self.names.fresh(name), type=ir.TensorType(tensor.dtype),
                         shape=ir.Shape(data.shape), const_value=tensor)
        self._weights.append(value)
        return value

    @property
    def params(self) -> int:
        """Elements of every new initializer (factors, and shape constants where there are any)."""
        return sum(value.const_value.size for value in self._weights)

    # -- nodes ---------------------------------------------------------------------------------
    def op(self, op_type: str, inputs: Sequence[ir.Value | None], suffix: str, dims: Dims,
           dtype: ir.DataType | None = None, **attributes: Any) -> ir.Value:
        """Append `op_type(inputs)` named `<node>.<suffix>`; its output gets `dims` and the dtype.

        Trailing None inputs (an absent bias) are dropped; None attributes are not set."""
        inputs = list(inputs)
        while inputs and inputs[-1] is None:
            inputs.pop()
        name = f"{self.base}.{suffix}"
        i = 0
        while name in self.taken:
            i += 1
            name = f"{self.base}.{suffix}_{i}"
        self.taken.add(name)
        node = ir.node(op_type, list(inputs), attributes={k: v for k, v in attributes.items() if v is not None},
                       name=name, metadata_props={"onnxpress.pass": self.pass_name})
        out = node.outputs[0]
        out.name = self.names.fresh(name)
        out.type = ir.TensorType(dtype if dtype is not None else self.dtype)
        if dims is not None:
            out.shape = ir.Shape(list(dims))
        self.nodes.append(node)
        return out

    # -- swapping ------------------------------------------------------------------------------
    def commit(self, output: ir.Value) -> None:
        """Put the new chain (ending in `output`) in place of the node; drop the old weight."""
        for value in self._weights:
            self.graph.register_initializer(value)
        old = self.node.outputs[0]
        ir.convenience.replace_nodes_and_values(self.graph, self.node, [self.node], self.nodes, [old], [output])
        weight = self.weight
        if weight.uses():
            return
        if weight.name in self.graph.initializers and self.graph.initializers[weight.name] is weight:
            del self.graph.initializers[weight.name]
        producer = weight.producer()
        if producer is not None and producer.graph is self.graph and producer.op_type == "Constant":
            self.graph.remove(producer, safe=True)

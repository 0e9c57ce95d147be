"""Per-op channel rules for ChannelDependencyAnalysis, looked up by op type.

Each rule reads the slots (tracked channel axis + elements) of a node's inputs and either passes
them on to its outputs, ties them together, records the constant slices that belong to them, or
freezes them with a reason. The rules follow ../shared/REFERENCES.md ("Structured pruning on
ONNX"), made strict: an op without a rule freezes every channel that reaches it, so the analysis
may miss a chance to prune but never produces a wrong model.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import numpy as np
import onnx_ir as ir

from onnxpress.passes.pruning.dependency import ChannelDependencies, Slot

__all__ = ["HandlerContext", "handle", "RULES"]

logger = logging.getLogger(__name__)

Rule = Callable[["HandlerContext", ir.Node], None]
RULES: dict[str, Rule] = {}
#: rules that reason about channels in every input (n-ary elementwise ops, Concat); for all other
#: rules a tracked value in a later input (a dynamic weight, bias or scale) is frozen by `handle`.
MULTI_INPUT_RULES: set[Rule] = set()


def rule(*op_types: str) -> Callable[[Rule], Rule]:
    def register(fn: Rule) -> Rule:
        for op in op_types:
            RULES[op] = fn
        return fn

    return register


class HandlerContext:
    """What rules need: the dependencies being built, constants, shapes, opset."""

    def __init__(self, deps: ChannelDependencies, model: ir.Model, *, allow_lossy_norms: bool = False) -> None:
        self.deps = deps
        self.model = model
        self.graph = model.graph
        self.allow_lossy_norms = allow_lossy_norms
        self.opset = model.opset_imports.get("", model.opset_imports.get("ai.onnx", 13))
        self._graph_inputs = {id(v) for v in self.graph.inputs}
        self._member_users: dict[int, set[int]] = defaultdict(set)  # id(initializer) -> id(nodes)

    # -- reading the graph -------------------------------------------------------------------
    def initializer(self, value: ir.Value | None) -> np.ndarray | None:
        """The array of a constant initializer (not an overridable graph input), else None."""
        if value is None or value.const_value is None or id(value) in self._graph_inputs:
            return None
        if self.graph.initializers.get(value.name) is not value:
            return None
        return value.const_value.numpy()

    def const(self, value: ir.Value | None) -> np.ndarray | None:
        """Any constant value (initializer or folded Constant output), for reading attributes."""
        if value is None or value.const_value is None or id(value) in self._graph_inputs:
            return None
        return value.const_value.numpy()

    def dims(self, value: ir.Value | None) -> list[int | None] | None:
        if value is None or value.shape is None:
            return None
        return [d if isinstance(d, int) else None for d in value.shape]

    def symbolic_dims(self, value: ir.Value | None) -> list[int | str | None] | None:
        if value is None or value.shape is None:
            return None
        out: list[int | str | None] = []
        for d in value.shape:
            if isinstance(d, int):
                out.append(d)
            else:
                name = getattr(d, "value", None)
                out.append(name if isinstance(name, str) and name else None)
        return out

    def rank(self, value: ir.Value | None) -> int | None:
        dims = self.dims(value)
        return None if dims is None else len(dims)

    def attr(self, node: ir.Node, name: str, default: Any = None) -> Any:
        a = node.attributes.get(name)
        return default if a is None else a.value

    def slot(self, value: ir.Value | None) -> Slot | None:
        return self.deps.slot(value)

    def slot_and_rank(self, node: ir.Node) -> tuple[Slot, int] | None:
        """The slot and rank of `node`'s first input; None when untracked, or (frozen) rank unknown."""
        xs = self.slot(node.inputs[0])
        if xs is None:
            return None
        r = self.rank(node.inputs[0])
        if r is None:
            self.freeze(xs.elements, f"{self.name(node)}: rank unknown")
            return None
        return xs, r

    def set_slot(self, value: ir.Value | None, axis: int, elements: np.ndarray) -> None:
        if value is not None:
            self.deps.set_slot(value, Slot(axis, np.asarray(elements, dtype=np.int64)))

    def freeze(self, elements: np.ndarray, reason: str) -> None:
        self.deps.freeze(elements, reason)

    def freeze_inputs(self, node: ir.Node, reason: str) -> None:
        for v in node.inputs:
            self.deps.freeze_value(v, reason)

    def member(self, value: ir.Value, axis: int, elements: np.ndarray, node: ir.Node, role: str) -> None:
        self.deps.add_member(value, axis, elements, node, role)
        self._member_users[id(value)].add(id(node))

    def name(self, node: ir.Node) -> str:
        return f"{node.op_type} '{node.name or (node.outputs[0].name if node.outputs else '?')}'"

    def new_int_input(self, node: ir.Node, index: int, array: np.ndarray, base: str, dtype: Any = np.int64) -> None:
        """Give `node` a new constant integer initializer as input `index` (the old one may be
        shared, so it is never edited; it is dropped when nothing reads it any more)."""
        name = base
        k = 0
        while name in self.graph.initializers:
            k += 1
            name = f"{base}_{k}"
        tensor = ir.tensor(np.asarray(array, dtype=dtype), name=name)
        value = ir.Value(name=name, const_value=tensor)
        value.shape = ir.Shape(list(np.asarray(array).shape))
        value.type = ir.TensorType(tensor.dtype)
        self.graph.register_initializer(value)
        old = node.inputs[index] if index < len(node.inputs) else None
        if index >= len(node.inputs):
            node.resize_inputs(index + 1)
        node.replace_input_with(index, value)
        if (old is not None and not old.uses() and not old.is_graph_output() and id(old) not in self._graph_inputs
                and self.graph.initializers.get(old.name) is old):
            self.graph.initializers.pop(old.name)  # the replaced constant is read by nothing else

    # -- after the walk ------------------------------------------------------------------------
    def check_member_uses(self) -> None:
        """Freeze members whose weight is also read by a node that did not account for it, and
        tie together members that share a weight along the same axis."""
        by_value: dict[int, list] = defaultdict(list)
        for m in self.deps.members:
            by_value[id(m.value)].append(m)
        for members in by_value.values():
            value = members[0].value
            users = {id(n) for n, _ in value.uses()}
            registered = self._member_users[id(value)]
            elements = np.concatenate([m.elements for m in members])
            if value.is_graph_output():
                self.freeze(elements, f"weight '{value.name}' is a graph output")
            elif not users <= registered:
                others = [n.op_type for n, _ in value.uses() if id(n) not in registered]
                self.freeze(elements, f"weight '{value.name}' is also read by {', '.join(sorted(set(others)))}")
            by_axis: dict[int, list] = defaultdict(list)
            for m in members:
                by_axis[m.axis].append(m)
            for axis, same_axis in by_axis.items():
                # Every reader must see the sliced axis as channels it prunes too: a second Conv
                # fed by a graph input would otherwise get a weight narrower than its input.
                readers = {id(m.node) for m in same_axis}
                if users - readers:
                    self.freeze(np.concatenate([m.elements for m in same_axis]),
                                f"weight '{value.name}' axis {axis} is shared with a layer whose channels are not tracked")
                for other in same_axis[1:]:
                    self.deps.unify(same_axis[0].elements, other.elements, f"shared weight '{value.name}'")


def handle(ctx: HandlerContext, node: ir.Node) -> None:
    """Apply the rule for `node`, or freeze everything that reaches it."""
    if _has_subgraph(node):
        _freeze_subgraph_node(ctx, node)
        return
    if node.domain not in ("", "ai.onnx"):
        ctx.freeze_inputs(node, f"{node.domain}.{node.op_type} is not understood")
        return
    fn = RULES.get(node.op_type)
    if fn is None:
        if any(ctx.slot(v) is not None for v in node.inputs):
            ctx.freeze_inputs(node, f"{node.op_type} is not understood by the pruning rules")
        return
    fn(ctx, node)
    if fn not in MULTI_INPUT_RULES:
        # Only n-ary elementwise ops and Concat reason about channels beyond their first input:
        # anywhere else a tracked value in a parameter slot (a dynamic weight, bias, scale) stays.
        for v in node.inputs[1:]:
            ctx.deps.freeze_value(v, f"{ctx.name(node)} reads it as a parameter")


def _has_subgraph(node: ir.Node) -> bool:
    return any(a.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS) for a in node.attributes.values())


def _freeze_subgraph_node(ctx: HandlerContext, node: ir.Node) -> None:
    reason = f"{ctx.name(node)} has subgraphs"
    ctx.freeze_inputs(node, reason)
    for attr in node.attributes.values():
        graphs = [attr.value] if attr.type == ir.AttributeType.GRAPH else list(attr.value) if attr.type == ir.AttributeType.GRAPHS else []
        for g in graphs:
            for inner in ir.traversal.RecursiveGraphIterator(g):
                for v in inner.inputs:
                    ctx.deps.freeze_value(v, reason)  # outer-scope values captured by the body


# The rules register themselves into RULES on import (after everything above is defined).
from onnxpress.passes.pruning import rules_compute, rules_movement  # noqa: E402,F401,I001

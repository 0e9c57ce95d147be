"""Structural invariants of the IR: what the verifier instrument checks after every pass.

`verify_structure` walks every graph once (main graph, subgraphs in scope order, function bodies)
and lists what is broken, in words a pass author can act on: inputs that are not defined or are
defined later (topological order), duplicate value or node names, graph outputs nobody produces,
initializers whose tensor disagrees with the value's declared shape or type, node domains missing
from the opset imports, and calls to model-local functions that do not exist. It is O(nodes) and
looks only at shapes and types, never at weight data.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import onnx_ir as ir

from onnxpress.errors import VerificationError

__all__ = ["check_structure", "verify_structure"]

logger = logging.getLogger(__name__)

_SHOWN = 5


def _domain(domain: str) -> str:
    return "" if domain == "ai.onnx" else domain


def _subgraphs(node: ir.Node) -> Iterable[ir.Graph]:
    for attr in node.attributes.values():
        if attr.is_ref() or attr.value is None:
            continue
        if attr.type == ir.AttributeType.GRAPH:
            yield attr.value
        elif attr.type == ir.AttributeType.GRAPHS:
            yield from attr.value


def _where(graph: ir.Graph | ir.Function, depth: int) -> str:
    if isinstance(graph, ir.Function):
        return f"function {graph.domain}::{graph.name}"
    name = graph.name or "(unnamed)"
    return f"graph {name!r}" if depth == 0 else f"subgraph {name!r}"


class _Verifier:
    def __init__(self, model: ir.Model) -> None:
        self.model = model
        self.problems: list[str] = []
        self.functions = {(_domain(f.domain), f.name, f.overload) for f in model.functions.values()}
        self.function_domains = {domain for domain, _, _ in self.functions}

    def run(self) -> list[str]:
        model_opsets = {_domain(d) for d in self.model.opset_imports}
        self._graph(self.model.graph, [], model_opsets, 0)
        for function in self.model.functions.values():
            opsets = model_opsets | {_domain(d) for d in function.opset_imports}
            self._graph(function, [], opsets, 0)
        return self.problems

    def _graph(
        self,
        graph: ir.Graph | ir.Function,
        outer: list[set[ir.Value]],
        opsets: set[str],
        depth: int,
    ) -> None:
        where = _where(graph, depth)
        defined: set[ir.Value] = set(graph.inputs)
        names: dict[str, object] = {}

        def claim(value: ir.Value, kind: str) -> None:
            if not value.name:
                return
            other = names.setdefault(value.name, value)
            if other is not value:
                self.problems.append(f"{where}: value name {value.name!r} is used twice ({kind})")

        for value in graph.inputs:
            claim(value, "graph input")
        if isinstance(graph, ir.Graph):
            for name, value in graph.initializers.items():
                defined.add(value)
                claim(value, "initializer")
                self._initializer(where, name, value)

        produced_here = {out for node in graph for out in node.outputs}
        node_names: set[str] = set()
        scopes = [*outer, defined]

        for node in graph:
            label = f"{where}: node {node.name or node.op_type!r} ({node.op_type})"
            if node.name:
                if node.name in node_names:
                    self.problems.append(f"{where}: node name {node.name!r} is used twice")
                node_names.add(node.name)
            for index, value in enumerate(node.inputs):
                if value is None or any(value in scope for scope in scopes):
                    continue
                if value in produced_here:
                    self.problems.append(
                        f"{label}: input {index} {value.name!r} is produced by a later node (not in topological order)"
                    )
                else:
                    self.problems.append(f"{label}: input {index} {value.name!r} is not defined")
            self._domain_and_function(label, node, opsets)
            for sub in _subgraphs(node):
                self._graph(sub, scopes, opsets, depth + 1)
            for out in node.outputs:
                defined.add(out)
                claim(out, "node output")

        for value in graph.outputs:
            if not any(value in scope for scope in scopes):
                self.problems.append(f"{where}: graph output {value.name!r} is not produced by any node or input")

    def _initializer(self, where: str, name: str, value: ir.Value) -> None:
        tensor = value.const_value
        if tensor is None:
            return
        if value.dtype is not None and value.dtype != tensor.dtype:
            self.problems.append(
                f"{where}: initializer {name!r} is declared {value.dtype} but its tensor is {tensor.dtype}"
            )
        if value.shape is not None:
            declared = list(value.shape)
            actual = list(tensor.shape)
            if len(declared) != len(actual) or any(
                isinstance(d, int) and d != a for d, a in zip(declared, actual)
            ):
                self.problems.append(
                    f"{where}: initializer {name!r} is declared with shape {declared} but its tensor has {actual}"
                )

    def _domain_and_function(self, label: str, node: ir.Node, opsets: set[str]) -> None:
        domain = _domain(node.domain)
        if domain not in opsets:
            self.problems.append(f"{label}: domain {node.domain or 'ai.onnx'!r} is not in the opset imports")
        if domain in self.function_domains and (domain, node.op_type, node.overload) not in self.functions:
            self.problems.append(f"{label}: calls function {node.domain}::{node.op_type}, which the model does not define")


def verify_structure(model: ir.Model) -> list[str]:
    """Human-readable structural problems of `model`; an empty list means it is well formed."""
    problems = _Verifier(model).run()
    logger.debug("structure check: %d problem(s)", len(problems))
    return problems


def check_structure(model: ir.Model) -> None:
    """Raise `VerificationError` naming the first few structural problems, if there are any."""
    problems = verify_structure(model)
    if not problems:
        return
    shown = "; ".join(problems[:_SHOWN])
    more = f" (and {len(problems) - _SHOWN} more)" if len(problems) > _SHOWN else ""
    raise VerificationError(
        f"the model is structurally invalid: {shown}{more}", details={"problems": problems}
    )

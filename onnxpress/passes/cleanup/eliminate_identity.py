"""`eliminate-identity`: remove Identity nodes, keeping every graph output's name.

onnx_ir's `IdentityEliminationPass` renames the input to the output's name when the output is a
graph output; when the input is *also* a graph output (a Scan body returning `s` and
`Identity(s)`), that renames an existing output and breaks the graph. This pass keeps its rules
and adds the missing guards.
"""

from __future__ import annotations

import logging
from typing import Any

import onnx_ir as ir

from onnxpress.passes.base import Pass, PassResult
from onnxpress.passes.cleanup import _util as u
from onnxpress.passes.registry import register_pass

logger = logging.getLogger(__name__)


def _removable(node: ir.Node) -> bool:
    if not u.is_onnx_op(node, "Identity") or len(node.inputs) != 1 or len(node.outputs) != 1:
        return False
    source, out = node.inputs[0], node.outputs[0]
    if source is None:
        return False
    if not out.is_graph_output():
        return True
    # `source` would have to take over the output's name: only a value this graph's own nodes
    # produce, that is no input, initializer or output of the graph already.
    producer = source.producer()
    return (
        producer is not None
        and producer.graph is node.graph
        and not source.is_graph_input()
        and not source.is_initializer()
        and not source.is_graph_output()
    )


@register_pass
class EliminateIdentityPass(Pass):
    """Remove `y = Identity(x)` by making y's users read x.

    Applies everywhere: main graph, subgraphs and model-local functions. When y is a graph output,
    x takes over y's name, which is done only when x is produced by a node of the same graph and is
    not itself a graph input, initializer or graph output. Otherwise (an output that just forwards
    an input, an initializer, another output or an outer-scope value) the Identity stays: the
    graph's interface needs it.
    """

    name = "eliminate-identity"

    def run(self, model: ir.Model, am: Any) -> PassResult:
        removed = 0
        for graph in list(u.all_graphs(model)):
            for node in list(graph):
                if not _removable(node):
                    continue
                source, out = node.inputs[0], node.outputs[0]
                assert source is not None
                if source.shape is None:
                    source.shape = out.shape
                if source.type is None:
                    source.type = out.type
                is_output = out.is_graph_output()
                ir.convenience.replace_all_uses_with(out, source, replace_graph_outputs=True)
                graph.remove(node, safe=True)
                if is_output:
                    source.name = out.name
                removed += 1
        if removed:
            logger.info("eliminate-identity removed %d Identity node(s)", removed)
        return PassResult(model, removed > 0, {"removed": removed})

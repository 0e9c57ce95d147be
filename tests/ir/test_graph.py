"""networkx views: dataflow edges, components, dominators."""

from __future__ import annotations

import onnx_ir as ir

from onnxpress.ir.graph import all_graphs, dataflow_graph, dominators, weakly_connected_components
from tests.util import model_from_text

TEXT = """
<ir_version: 9, opset_import: ["": 18, "local": 1]>
g (bool c, float[4] x, float[4] u) => (float[4] y, float[4] z) <float[4] w = {1, 2, 3, 4}> {
  a = Mul(x, w)
  b = Relu(a)
  d = Neg(a)
  e = Add(b, d)
  y = If (c) <then_branch = t () => (float[4] o) { o = Add(e, w) },
              else_branch = f () => (float[4] o2) { o2 = Identity(e) }>
  z = local.Twice(u)
}
<domain: "local", opset_import: ["": 18]>
Twice (p) => (r) {
  r = Add(p, p)
}
"""


def _by_output(model: ir.Model) -> dict[str, ir.Node]:
    return {node.outputs[0].name: node for node in model.graph}


def test_dataflow_graph_edges_carry_values():
    model = model_from_text(TEXT)
    n = _by_output(model)
    dag = dataflow_graph(model)
    assert dag.number_of_nodes() == len(model.graph) + 3 + 2  # nodes, inputs, outputs
    assert dag.edges["input:x", n["a"]]["value"].name == "x"
    assert dag.edges[n["a"], n["b"]]["value"] is n["a"].outputs[0]
    assert dag.edges[n["e"], n["y"]]["value"].name == "e"  # captured by the If's branches
    assert dag.edges[n["y"], "output:y"]["value"].name == "y"
    assert not any(d["value"].name == "w" for _, _, d in dag.edges(data=True))  # initializers: no edges
    twice = model.functions[("local", "Twice", "")]
    inner = dataflow_graph(twice)
    assert inner.edges["input:p", twice[0]]["values"] == [twice.inputs[0], twice.inputs[0]]


def test_components_and_dominators():
    model = model_from_text(TEXT)
    n = _by_output(model)
    components = weakly_connected_components(model)
    assert components == [[n["a"], n["b"], n["d"], n["e"], n["y"]], [n["z"]]]
    idom = dominators(model)
    assert idom["input:x"] is None
    assert idom[n["b"]] is n["a"] and idom[n["d"]] is n["a"]
    assert idom[n["e"]] is n["a"]  # two paths from a meet at e
    assert idom[n["y"]] is None  # the If also depends on input c
    assert idom["output:z"] is n["z"]


def test_all_graphs_includes_subgraphs_and_functions():
    model = model_from_text(TEXT)
    graphs = list(all_graphs(model))
    assert len(graphs) == 4
    assert graphs[0] is model.graph and isinstance(graphs[-1], ir.Function)

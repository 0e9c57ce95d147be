"""Graph views: every graph of a model, and networkx views of one graph's dataflow.

`all_graphs` walks the main graph, every subgraph (If/Loop/Scan bodies) and every model-local
function body, which is the scope most whole-model checks need. `dataflow_graph` turns one graph
into a `networkx.DiGraph` whose nodes are the `onnx_ir.Node` objects plus string sentinels for graph
inputs and outputs ("input:x", "output:y"); each edge carries the `onnx_ir.Value` that flows along
it. Components and dominators are computed on that view. The view is a snapshot: rebuild it after
the graph changes.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Union

import onnx_ir as ir

if TYPE_CHECKING:
    import networkx as nx

__all__ = [
    "all_graphs",
    "dataflow_graph",
    "dominators",
    "input_sentinel",
    "output_sentinel",
    "weakly_connected_components",
]

logger = logging.getLogger(__name__)

GraphLike = Union[ir.Model, ir.Graph, ir.Function]
_ROOT = "__root__"


def all_graphs(model: ir.Model) -> Iterator[ir.Graph | ir.Function]:
    """The main graph, its subgraphs, then each function body and the subgraphs inside it."""
    yield from model.graphs()
    for function in model.functions.values():
        yield function
        yield from function.subgraphs()


def input_sentinel(name: str | None) -> str:
    return f"input:{name}"


def output_sentinel(name: str | None) -> str:
    return f"output:{name}"


def _as_graph(source: GraphLike) -> ir.Graph | ir.Function:
    return source.graph if isinstance(source, ir.Model) else source


def _captured_values(node: ir.Node) -> list[ir.Value]:
    """Values from enclosing scopes that `node`'s subgraphs read (If/Loop/Scan bodies)."""
    inner_graphs = set()
    for attr in node.attributes.values():
        if attr.is_ref():
            continue
        if attr.type == ir.AttributeType.GRAPH:
            inner_graphs.add(attr.value)
        elif attr.type == ir.AttributeType.GRAPHS:
            inner_graphs.update(attr.value)
    if not inner_graphs:
        return []
    inner_graphs.update(g for sub in list(inner_graphs) for g in sub.subgraphs())
    captured: dict[ir.Value, None] = {}
    for sub in list(inner_graphs):
        for inner in sub:
            for value in inner.inputs:
                if value is None:
                    continue
                producer = value.producer()
                owner = producer.graph if producer is not None else value.graph
                if owner not in inner_graphs:
                    captured[value] = None
    return list(captured)


def dataflow_graph(source: GraphLike) -> nx.DiGraph:
    """A DiGraph of one graph's dataflow (subgraphs stay inside their If/Loop/Scan node).

    Values a subgraph captures from the enclosing graph appear as edges into the node that owns the
    subgraph. Initializers and constants feed no edges: they are not computed. When one node feeds
    another through several values, the edge attribute `value` holds the first and `values` all.
    """
    import networkx as nx

    graph = _as_graph(source)
    dag = nx.DiGraph()
    graph_inputs = {value: input_sentinel(value.name) for value in graph.inputs}
    for sentinel in graph_inputs.values():
        dag.add_node(sentinel, kind="input")

    def add_edge(src: object, dst: object, value: ir.Value) -> None:
        if dag.has_edge(src, dst):
            dag.edges[src, dst]["values"].append(value)
        else:
            dag.add_edge(src, dst, value=value, values=[value])

    def source_of(value: ir.Value) -> object | None:
        if value in graph_inputs:
            return graph_inputs[value]
        producer = value.producer()
        if producer is not None and producer.graph is graph:
            return producer
        return None  # initializer, or a value of an enclosing scope

    for node in graph:
        dag.add_node(node, kind="node")
        inputs = [v for v in node.inputs if v is not None] + _captured_values(node)
        for value in inputs:
            src = source_of(value)
            if src is not None:
                add_edge(src, node, value)
    for value in graph.outputs:
        sink = output_sentinel(value.name)
        dag.add_node(sink, kind="output")
        src = source_of(value)
        if src is not None:
            add_edge(src, sink, value)
    return dag


def _as_dataflow(source: GraphLike | nx.DiGraph) -> nx.DiGraph:
    import networkx as nx

    return source if isinstance(source, nx.DiGraph) else dataflow_graph(source)


def weakly_connected_components(source: GraphLike | nx.DiGraph) -> list[list[ir.Node]]:
    """Groups of nodes connected by dataflow (sentinels link the nodes sharing a graph input).

    Each component lists its `onnx_ir.Node`s in graph order; components are ordered by their
    first node. Components made only of sentinels are left out.
    """
    import networkx as nx

    dag = _as_dataflow(source)
    order = {node: i for i, node in enumerate(n for n in dag if isinstance(n, ir.Node))}
    components = []
    for members in nx.weakly_connected_components(dag):
        nodes = sorted((n for n in members if isinstance(n, ir.Node)), key=order.__getitem__)
        if nodes:
            components.append(nodes)
    components.sort(key=lambda nodes: order[nodes[0]])
    return components


def dominators(source: GraphLike | nx.DiGraph) -> dict[object, object | None]:
    """Immediate dominators of every node reachable from the graph inputs.

    A virtual root feeds every input sentinel and every node without predecessors (nodes that
    read only initializers). A node whose only dominator is that root maps to None; sentinels are
    included, so `result["output:y"]` is the last node every path to output y passes through.
    """
    import networkx as nx

    dag = _as_dataflow(source).copy()
    starts = [n for n in dag if dag.in_degree(n) == 0]
    dag.add_node(_ROOT)
    dag.add_edges_from((_ROOT, n) for n in starts)
    idom = nx.immediate_dominators(dag, _ROOT)
    return {n: (None if d == _ROOT else d) for n, d in idom.items() if n != _ROOT}

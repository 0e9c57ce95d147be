"""The intermediate representation: onnx_ir plus what a compression compiler needs from it.

Safe I/O, op metatypes, shape glue, the cost model, networkx views and structural verification.
This layer imports neither `onnxpress.passes` nor `onnxpress.backends`.
"""

from __future__ import annotations

from onnxpress.ir.cost import ModelCost, NodeCost, model_cost, node_cost
from onnxpress.ir.graph import all_graphs, dataflow_graph, dominators, weakly_connected_components
from onnxpress.ir.io import file_size, iter_tensors, load, save, weight_bytes
from onnxpress.ir.ops import (
    ACTIVATION,
    CONSTANT,
    CONTROL_FLOW,
    DATA_MOVEMENT,
    ELEMENTWISE_BINARY,
    ELEMENTWISE_UNARY,
    LINEAR,
    NORMALIZATION,
    POOLING,
    QUANTIZATION,
    REDUCTION,
    SHAPE,
    has_subgraphs,
    is_default_domain,
    is_elementwise,
    is_linear,
    metatypes,
    op_metatypes,
)
from onnxpress.ir.shapes import infer_shapes, parse_input_shape, set_input_shapes
from onnxpress.ir.verify import check_structure, verify_structure

__all__ = [
    "ACTIVATION",
    "CONSTANT",
    "CONTROL_FLOW",
    "DATA_MOVEMENT",
    "ELEMENTWISE_BINARY",
    "ELEMENTWISE_UNARY",
    "LINEAR",
    "ModelCost",
    "NORMALIZATION",
    "NodeCost",
    "POOLING",
    "QUANTIZATION",
    "REDUCTION",
    "SHAPE",
    "all_graphs",
    "check_structure",
    "dataflow_graph",
    "dominators",
    "file_size",
    "has_subgraphs",
    "infer_shapes",
    "is_default_domain",
    "is_elementwise",
    "is_linear",
    "iter_tensors",
    "load",
    "metatypes",
    "model_cost",
    "node_cost",
    "op_metatypes",
    "parse_input_shape",
    "save",
    "set_input_shapes",
    "verify_structure",
    "weakly_connected_components",
]

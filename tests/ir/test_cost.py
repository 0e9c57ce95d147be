"""The cost model: MACs and params counted by hand for Conv, Gemm, MatMul and attention."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from onnxpress.ir import cost
from onnxpress.ir.shapes import infer_shapes
from tests.util import model_from_text


def _model(text: str, weights: tuple[str, ...] = ("w", "b", "v")) -> ir.Model:
    """A model from ONNX text whose inputs named in `weights` become zero-filled initializers."""
    model = model_from_text(text)
    for value in list(model.graph.inputs):
        if value.name in weights:
            model.graph.inputs.remove(value)
            value.const_value = ir.tensor(np.zeros(list(value.shape), np.float32), name=value.name)
            model.graph.register_initializer(value)
    return model


def _node(model: ir.Model, op_type: str, index: int = 0) -> ir.Node:
    return [n for n in ir.traversal.RecursiveGraphIterator(model.graph) if n.op_type == op_type][index]


def test_conv_macs_and_params():
    model = _model(
        """
        <ir_version: 9, opset_import: ["": 18]>
        g (float[2, 4, 8, 8] x, float[6, 2, 3, 3] w, float[6] b) => (float[2, 6, 4, 4] y) {
          y = Conv <group = 2, strides = [2, 2], pads = [1, 1, 1, 1]> (x, w, b)
        }
        """
    )
    # out 2x6x4x4; each output element: (4/2 input channels) * 3*3 taps
    expected = 2 * 6 * 4 * 4 * 2 * 3 * 3
    c = cost.node_cost(_node(model, "Conv"))
    assert (c.macs, c.params, c.param_bytes, c.exact) == (expected, 6 * 2 * 3 * 3 + 6, 4 * (108 + 6), True)
    # without the output shape the spatial size is computed from the attributes
    _node(model, "Conv").outputs[0].shape = None
    assert cost.node_cost(_node(model, "Conv")).macs == expected


def test_gemm_with_transposed_weight():
    model = _model(
        """
        <ir_version: 9, opset_import: ["": 18]>
        g (float[5, 16] x, float[10, 16] w, float[10] b) => (float[5, 10] y) {
          y = Gemm <transB = 1> (x, w, b)
        }
        """
    )
    c = cost.node_cost(_node(model, "Gemm"))
    assert (c.macs, c.params, c.exact) == (5 * 16 * 10, 160 + 10, True)


def test_matmul_batched_and_attention():
    model = _model(
        """
        <ir_version: 9, opset_import: ["": 18]>
        g (float[2, 12, 64, 32] q, float[2, 12, 32, 64] k, float[3, 7, 16] a, float[N, 16] z, float[16, 8] w)
            => (float[2, 12, 64, 64] s, float[3, 7, 8] p, float[N, 8] r) {
          s = MatMul(q, k)
          p = MatMul(a, w)
          r = MatMul(z, w)
        }
        """
    )
    attention = cost.node_cost(_node(model, "MatMul", 0))
    assert (attention.macs, attention.params, attention.exact) == (2 * 12 * 64 * 32 * 64, 0, True)
    broadcast = cost.node_cost(_node(model, "MatMul", 1))
    assert (broadcast.macs, broadcast.params, broadcast.exact) == (3 * 7 * 16 * 8, 128, True)
    symbolic = cost.node_cost(_node(model, "MatMul", 2))
    assert (symbolic.macs, symbolic.exact) == (16 * 8, False)  # N counts as 1


def test_model_cost_counts_subgraphs_and_shared_weights_once():
    model = _model(
        """
        <ir_version: 9, opset_import: ["": 18]>
        g (bool c, float[4, 16] x, float[16, 8] w) => (float[4, 8] y) {
          a = MatMul(x, w)
          y = If (c) <then_branch = t () => (float[4, 8] o) { o = MatMul(x, w) },
                      else_branch = e () => (float[4, 8] o2) { o2 = Relu(a) }>
        }
        """
    )
    total = cost.model_cost(model)
    assert total.nodes == 4
    assert (total.params, total.param_bytes) == (128, 512)
    assert total.macs == 2 * 4 * 16 * 8
    assert total.exact
    assert total.by_op["MatMul"] == {"count": 2, "macs": 2 * 4 * 16 * 8, "params": 256}
    assert total.by_op["If"]["count"] == 1


def test_unknown_shapes_are_inexact_and_inference_fixes_them():
    model = _model(
        """
        <ir_version: 9, opset_import: ["": 18]>
        g (float[3, 16] x, float[16, 8] w, float[8, 4] v) => (float[3, 4] y) {
          h = MatMul(x, w)
          y = MatMul(h, v)
        }
        """
    )
    second = _node(model, "MatMul", 1)
    assert second.inputs[0].shape is None
    assert cost.node_cost(second).exact is False
    assert infer_shapes(model) is True
    c = cost.node_cost(second)
    assert (c.macs, c.exact) == (3 * 8 * 4, True)

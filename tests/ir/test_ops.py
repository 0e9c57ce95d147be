"""Op metatypes: the table answers what kind of op a node is."""

from __future__ import annotations

import onnx_ir as ir

from onnxpress.ir import ops
from tests.util import model_from_text


def _node(op_type: str, domain: str = "") -> ir.Node:
    return ir.Node(domain, op_type, inputs=[])


def test_categories():
    assert ops.metatypes(_node("Conv")) == {ops.LINEAR}
    assert ops.metatypes(_node("Relu")) == {ops.ACTIVATION, ops.ELEMENTWISE_UNARY}
    assert ops.metatypes(_node("Softmax")) == {ops.ACTIVATION}
    assert ops.metatypes(_node("QLinearMatMul")) == {ops.LINEAR, ops.QUANTIZATION}
    for op, category in [
        ("Add", ops.ELEMENTWISE_BINARY),
        ("BatchNormalization", ops.NORMALIZATION),
        ("MaxPool", ops.POOLING),
        ("Reshape", ops.DATA_MOVEMENT),
        ("ReduceMean", ops.REDUCTION),
        ("Shape", ops.SHAPE),
        ("Loop", ops.CONTROL_FLOW),
        ("DequantizeLinear", ops.QUANTIZATION),
        ("Constant", ops.CONSTANT),
    ]:
        assert category in ops.metatypes(_node(op)), op
    assert ops.metatypes(_node("Conv", "ai.onnx")) == {ops.LINEAR}
    assert ops.metatypes(_node("Conv", "com.example")) == frozenset()
    assert ops.metatypes(_node("NoSuchOp")) == frozenset()
    assert ops.metatypes(_node("DequantizeLinear", "com.microsoft")) == {ops.QUANTIZATION}
    assert set().union(*(ops.op_metatypes(op) for op in ops._DEFAULT)) <= ops.CATEGORIES


def test_predicates():
    assert ops.is_linear(_node("Gemm")) and not ops.is_linear(_node("Add"))
    assert ops.is_elementwise(_node("Mul")) and ops.is_elementwise(_node("Sigmoid"))
    assert not ops.is_elementwise(_node("Softmax")) and not ops.is_elementwise(_node("Transpose"))
    assert ops.is_default_domain(_node("Add")) and ops.is_default_domain(_node("Add", "ai.onnx"))
    assert not ops.is_default_domain(_node("Add", "com.microsoft"))
    model = model_from_text(
        """
        <ir_version: 9, opset_import: ["": 18]>
        g (bool c, float[2] x) => (float[2] y) {
          y = If (c) <then_branch = t () => (float[2] a) { a = Relu(x) },
                      else_branch = e () => (float[2] b) { b = Neg(x) }>
        }
        """
    )
    assert ops.has_subgraphs(model.graph[0])
    assert not ops.has_subgraphs(_node("Relu"))

from __future__ import annotations

import onnx_ir as ir

from tests.passes.cleanup._common import apply

HEAD = '<ir_version: 8, opset_import: ["" : 17, "com.microsoft" : 1]>'


def test_records_shapes():
    text = f"""{HEAD}
    g (float[2,3] x) => (float[3,2] y) {{ a = Relu(x)
      y = Transpose(a) }}"""
    model, result = apply("infer-shapes", text)
    assert result.modified
    a = model.graph.node(0).outputs[0]
    assert a.shape == ir.Shape([2, 3]) and a.dtype == ir.DataType.FLOAT


def test_custom_domain_does_not_fail():
    text = f"""{HEAD}
    g (float[2,3] x) => (float[2,3] y) {{ a = com.microsoft.FastGelu(x)
      y = Relu(a) }}"""
    model, _ = apply("infer-shapes", text)
    assert [n.op_type for n in model.graph] == ["FastGelu", "Relu"]


def test_nothing_new_to_learn():
    text = f"""{HEAD}
    g (float[2,3] x) => (float[2,3] y) {{ y = Relu(x) }}"""
    _, result = apply("infer-shapes", text)
    assert not result.modified

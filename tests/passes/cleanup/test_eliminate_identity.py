from __future__ import annotations

from tests.passes.cleanup._common import apply, ops

HEAD = '<ir_version: 8, opset_import: ["" : 17]>'


def test_removes_inner_identity_and_renames_into_output():
    text = f"""{HEAD}
    g (float[3] x) => (float[3] y) {{ a = Relu(x)
      b = Identity(a)
      y = Identity(b) }}"""
    model, result = apply("eliminate-identity", text)
    assert result.modified
    assert ops(model) == ["Relu"]
    assert model.graph.outputs[0].name == "y"


def test_keeps_identity_between_two_outputs():
    # The Scan-body case onnx_ir's pass breaks: the input is already an output itself.
    text = f"""{HEAD}
    g (float[3] x) => (float[3] a, float[3] y) {{ a = Relu(x)
      y = Identity(a) }}"""
    model, result = apply("eliminate-identity", text)
    assert not result.modified
    assert [v.name for v in model.graph.outputs] == ["a", "y"]


def test_keeps_input_forwarding_identity():
    text = f"""{HEAD}
    g (float[3] x) => (float[3] y) {{ y = Identity(x) }}"""
    model, result = apply("eliminate-identity", text)
    assert not result.modified
    assert ops(model) == ["Identity"]

"""The onnx_ir / onnxscript passes registered under our names."""

from __future__ import annotations

from tests.passes.cleanup._common import apply, ops

HEAD = '<ir_version: 8, opset_import: ["" : 17]>'


def test_fold_constants():
    text = f"""{HEAD}
    g (float[2] x) => (float[2] y) <float[2] a = {{1.0, 2.0}}, float[2] b = {{3.0, 4.0}}> {{
      c = Add(a, b)
      y = Mul(x, c) }}"""
    model, result = apply("fold-constants,dce", text)
    assert result.modified
    assert ops(model) == ["Mul"]
    _, result = apply("fold-constants", f"""{HEAD} g (float[2] x) => (float[2] y) {{ y = Relu(x) }}""")
    assert not result.modified


def test_cse_and_dce():
    text = f"""{HEAD}
    g (float[2] x) => (float[2] y) {{ a = Relu(x)
      b = Relu(x)
      unused = Neg(x)
      y = Add(a, b) }}"""
    model, result = apply("cse,dce", text)
    assert result.modified
    assert ops(model) == ["Relu", "Add"]
    model, result = apply("cse,dce", f"""{HEAD} g (float[2] x) => (float[2] y) {{ y = Relu(x) }}""")
    assert not result.modified


def test_dedup_initializers():
    text = f"""{HEAD}
    g (float[2] x) => (float[2] y) <float[2] a = {{1.0, 2.0}}, float[2] b = {{1.0, 2.0}}> {{
      c = Add(x, a)
      y = Mul(c, b) }}"""
    model, result = apply("dedup-initializers", text)
    assert result.modified
    assert len(model.graph.initializers) == 1

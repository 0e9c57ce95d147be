from __future__ import annotations

from tests.passes.cleanup._common import apply, ops

HEAD = '<ir_version: 8, opset_import: ["" : 17]>'


def test_inverse_pair_disappears():
    text = f"""{HEAD}
    g (float[2,3,4] x) => (float[2,3,4] y) {{
      a = Transpose<perm=[2, 0, 1]>(x)
      b = Transpose<perm=[1, 2, 0]>(a)
      y = Relu(b) }}"""
    model, result = apply("eliminate-transposes,dce", text)
    assert result.modified
    assert ops(model) == ["Relu"]


def test_chain_of_three_becomes_one():
    text = f"""{HEAD}
    g (float[2,3,4] x) => (float[4,2,3] y) {{
      a = Transpose<perm=[1, 0, 2]>(x)
      b = Transpose<perm=[0, 2, 1]>(a)
      y = Transpose(b) }}"""
    model, result = apply("eliminate-transposes,dce", text)
    assert result.modified
    assert ops(model) == ["Transpose"]
    assert model.graph.outputs[0].name == "y"


def test_single_transpose_stays():
    text = f"""{HEAD}
    g (float[2,3,4] x) => (float[4,3,2] y) {{ a = Relu(x)
      y = Transpose(a) }}"""
    model, result = apply("eliminate-transposes", text, check=False)
    assert not result.modified
    assert ops(model) == ["Relu", "Transpose"]

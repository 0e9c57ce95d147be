from __future__ import annotations

import pytest

from tests.passes.cleanup._common import apply, ops

HEAD = '<ir_version: 8, opset_import: ["" : 17]>'
W = "float[3,2] w = {1.0, 2.0, 3.0, 4.0, 5.0, 6.0}"


@pytest.mark.parametrize("bias, add", [("float[2] b = {0.5, -1.0}", "Add(m, b)"), ("float[1,2] b = {0.5, -1.0}", "Add(b, m)")])
def test_fuses_2d(bias, add):
    text = f"""{HEAD}
    g (float[4,3] x) => (float[4,2] y) <{W}, {bias}> {{ m = MatMul(x, w)
      y = {add} }}"""
    model, result = apply("fuse-matmul-add", text)
    assert result.modified
    assert ops(model) == ["Gemm"]
    assert model.graph.outputs[0].name == "y"


@pytest.mark.parametrize(
    "x_shape, bias, extra",
    [
        ("float[2,4,3]", "float[2] b = {0.5, -1.0}", ""),  # rank 3: Gemm takes 2-D only
        ("float[4,3]", "float[4,2] b = {1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0}", ""),  # per-row bias
        ("float[4,3]", "float[2] b = {0.5, -1.0}", "\n z = Relu(m)"),  # MatMul output used elsewhere
    ],
)
def test_does_not_apply(x_shape, bias, extra):
    out = x_shape.replace(",3]", ",2]")
    text = f"""{HEAD}
    g ({x_shape} x) => ({out} y) <{W}, {bias}> {{ m = MatMul(x, w)
      y = Add(m, b) {extra} }}"""
    model, result = apply("fuse-matmul-add", text, check=False)
    assert not result.modified
    assert ops(model)[:2] == ["MatMul", "Add"]

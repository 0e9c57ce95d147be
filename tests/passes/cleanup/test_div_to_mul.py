"""div-to-mul: Div by a float constant becomes Mul by its reciprocal."""

from __future__ import annotations

import pytest

from tests.passes.cleanup._common import apply, ops

HEAD = '<ir_version: 8, opset_import: ["" : 17]>'


@pytest.mark.parametrize(
    "divisor",
    ["float d = {6.0}", "float[3] d = {2.0, -0.5, 3.0}", "float[2,1] d = {7.0, 0.25}"],
    ids=["scalar", "vector", "broadcast"],
)
def test_division_by_a_constant_becomes_a_multiplication(divisor):
    text = f"""{HEAD}
    g (float[2,3] x) => (float[2,3] y) <{divisor}> {{
      y = Div(x, d) }}"""
    model, result = apply("div-to-mul", text)  # outputs checked on ORT (float rounding)
    assert result.modified
    assert ops(model) == ["Mul"]


@pytest.mark.parametrize(
    "body",
    [
        "y = Div(x, z)",  # a zero divisor: inf / nan stay as the model computes them
        "y = Div(x, h)",  # a non-float divisor
        "e = Div(x, s)\n y = Erf(e)",  # the x / sqrt(2) of a GELU: ORT fuses only the Div form
        "y = Div(s, x)",  # the constant is the numerator
    ],
    ids=["zero", "integer", "gelu-erf", "constant-numerator"],
)
def test_leaves_other_divisions(body):
    text = f"""{HEAD}
    g (float[2,3] x) => (float[2,3] y) <float[3] z = {{1.0, 0.0, 2.0}}, int64 h = {{2}}, float s = {{1.4142135}}> {{
      {body} }}"""
    model, result = apply("div-to-mul", text, check=False)
    assert not result.modified
    assert "Mul" not in ops(model)

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

from tests.passes.cleanup._common import apply, ops

HEAD = '<ir_version: 8, opset_import: ["" : 17]>'


def _floats(n: int, seed: int, positive: bool = False) -> str:
    values = np.random.default_rng(seed).standard_normal(n)
    if positive:
        values = np.abs(values) + 0.5
    return ", ".join(f"{v:.4f}" for v in values)


def _bn(c: int) -> str:
    return (
        f"float[{c}] s = {{{_floats(c, 1)}}}, float[{c}] b = {{{_floats(c, 2)}}}, "
        f"float[{c}] m = {{{_floats(c, 3)}}}, float[{c}] v = {{{_floats(c, 4, positive=True)}}}"
    )


def test_conv():
    text = f"""{HEAD}
    g (float[1,2,5,5] x) => (float[1,3,3,3] y)
      <float[3,2,3,3] w = {{{_floats(54, 5)}}}, float[3] cb = {{{_floats(3, 6)}}}, {_bn(3)}> {{
      c = Conv(x, w, cb)
      y = BatchNormalization<epsilon=0.001>(c, s, b, m, v) }}"""
    model, result = apply("fold-batchnorm", text)
    assert result.modified and result.stats == {"passes": 1}
    assert ops(model) == ["Conv"]


@pytest.mark.parametrize("group", [1, 2])
def test_conv_transpose_groups(group):
    # weight (C_in=4, M/g, 2, 2); M = 6 output channels
    per_group = 6 // group
    text = f"""{HEAD}
    g (float[1,4,3,3] x) => (float[1,6,4,4] y)
      <float[4,{per_group},2,2] w = {{{_floats(4 * per_group * 4, 7)}}}, {_bn(6)}> {{
      c = ConvTranspose<group={group}>(x, w)
      y = BatchNormalization(c, s, b, m, v) }}"""
    model, result = apply("fold-batchnorm", text)
    assert result.modified
    assert ops(model) == ["ConvTranspose"]


@pytest.mark.parametrize("trans_b", [0, 1])
def test_gemm(trans_b):
    w_shape = "4,3" if trans_b else "3,4"
    text = f"""{HEAD}
    g (float[2,3] x) => (float[2,4] y)
      <float[{w_shape}] w = {{{_floats(12, 8)}}}, float[4] gb = {{{_floats(4, 9)}}}, {_bn(4)}> {{
      c = Gemm<transB={trans_b}, beta=0.5, alpha=2.0>(x, w, gb)
      y = BatchNormalization(c, s, b, m, v) }}"""
    model, result = apply("fold-batchnorm", text)
    assert result.modified
    assert ops(model) == ["Gemm"]
    assert "beta" not in model.graph.node(0).attributes


def test_shared_weight_gets_a_new_tensor():
    text = f"""{HEAD}
    g (float[2,3] x) => (float[2,3] y, float[2,3] z)
      <float[3,3] w = {{{_floats(9, 8)}}}, {_bn(3)}> {{
      c = MatMul(x, w)
      c2 = Gemm(x, w)
      y = BatchNormalization(c2, s, b, m, v)
      z = Add(c, c) }}"""
    model, result = apply("fold-batchnorm", text)
    assert result.modified
    assert ops(model) == ["MatMul", "Gemm", "Add"]
    assert model.graph.node(0).inputs[1].name == "w"


@pytest.mark.parametrize(
    "nodes",
    [
        "c = Relu(x)\n y = BatchNormalization(c, s, b, m, v)",  # nothing to fold into
        "c = Conv(x, w)\n y = BatchNormalization(c, s, b, m, v)\n z = Relu(c)",  # Conv has other users
        "c = Conv(x, w)\n y = BatchNormalization<training_mode=1>(c, s, b, m, v)",
        "c = Conv(x, wi)\n y = BatchNormalization(c, s, b, m, v)",  # weight is a graph input
    ],
)
def test_does_not_apply(nodes):
    text = f"""{HEAD}
    g (float[1,3,3,3] x, float[3,3,1,1] wi) => (float[1,3,3,3] y)
      <float[3,3,1,1] w = {{{_floats(9, 5)}}}, {_bn(3)}> {{ {nodes} }}"""
    model, result = apply("fold-batchnorm", text, check=False)
    assert not result.modified
    assert "BatchNormalization" in ops(model)


def test_in_if_subgraph():
    text = f"""{HEAD}
    g (float[1,2,4,4] x, bool cond) => (float[1,3,4,4] y)
      <float[3,2,1,1] w = {{{_floats(6, 5)}}}, {_bn(3)}> {{
      y = If(cond) <
        then_branch = t () => (float[1,3,4,4] a) {{ c = Conv(x, w)
          a = BatchNormalization(c, s, b, m, v) }},
        else_branch = e () => (float[1,3,4,4] o) {{ c2 = Conv(x, w)
          o = Relu(c2) }}> }}"""
    model, result = apply("fold-batchnorm", text)
    assert result.modified
    then_branch = model.graph.node(0).attributes["then_branch"].as_graph()
    assert [n.op_type for n in then_branch] == ["Conv"]
    assert ir.DataType.FLOAT == then_branch.outputs[0].dtype

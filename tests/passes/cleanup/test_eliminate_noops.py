from __future__ import annotations

import pytest

from tests.passes.cleanup._common import apply, ops

HEAD = '<ir_version: 8, opset_import: ["" : 17]>'


@pytest.mark.parametrize(
    "body, init",
    [
        ("y = Add(x, z)", "float[1] z = {0.0}"),
        ("y = Add(z, x)", "float[4] z = {0.0, 0.0, 0.0, 0.0}"),
        ("y = Sub(x, z)", "float z = {0.0}"),
        ("y = Mul(x, z)", "float[1,4] z = {1.0, 1.0, 1.0, 1.0}"),
        ("y = Div(x, z)", "float[1] z = {1.0}"),
        ("y = Reshape(x, z)", "int64[2] z = {3, 4}"),
        ("y = Reshape(x, z)", "int64[2] z = {0, -1}"),
        ("y = Expand(x, z)", "int64[1] z = {4}"),
        ("y = Pad(x, z)", "int64[4] z = {0, 0, 0, 0}"),
        ("y = Slice(x, s, e)", "int64[1] s = {0}, int64[1] e = {9223372036854775807}"),
    ],
)
def test_removes_noop_with_constant(body, init):
    text = f"""{HEAD}
    g (float[3,4] x) => (float[3,4] out) <{init}> {{ {body}
      out = Relu(y) }}"""
    model, result = apply("eliminate-noops", text)
    assert result.modified
    assert ops(model) == ["Relu"]


@pytest.mark.parametrize(
    "body",
    [
        "y = Cast<to=1>(x)",
        "y = Transpose<perm=[0, 1]>(x)",
        "y = Concat<axis=0>(x)",
        "y = Sum(x)",
        "y = Dropout(x)",
        "y = Flatten<axis=1>(x)",
    ],
)
def test_removes_noop(body):
    text = f"""{HEAD}
    g (float[3,4] x) => (float[3,4] out) {{ {body}
      out = Relu(y) }}"""
    model, result = apply("eliminate-noops", text)
    assert result.modified
    assert ops(model) == ["Relu"]


@pytest.mark.parametrize(
    "body, init",
    [
        # broadcasting would change the output shape
        ("y = Add(x, z)", "float[2,3,4] z = {0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0}"),
        ("y = Mul(x, z)", "float[1] z = {2.0}"),
        ("y = Reshape(x, z)", "int64[2] z = {4, 3}"),
        ("y = Pad(x, z)", "int64[4] z = {0, 1, 0, 0}"),
        ("y = Slice(x, s, e)", "int64[1] s = {1}, int64[1] e = {9223372036854775807}"),
    ],
)
def test_keeps_real_work(body, init):
    text = f"""{HEAD}
    g (float[3,4] x) => (float[3,4] out) <{init}> {{ {body}
      out = Relu(y) }}"""
    model, result = apply("eliminate-noops", text, check=False)
    assert not result.modified
    assert len(ops(model)) == 2


def test_dropout_in_training_or_with_used_mask_stays():
    text = f"""{HEAD}
    g (float[3,4] x) => (float[3,4] out, bool[3,4] mask) <bool t = {{1}}> {{
      y, mask = Dropout(x)
      y2 = Dropout(y, , t)
      out = Relu(y2) }}"""
    model, result = apply("eliminate-noops", text, check=False)
    assert not result.modified
    assert ops(model) == ["Dropout", "Dropout", "Relu"]


def test_graph_output_keeps_its_name():
    text = f"""{HEAD}
    g (float[3,4] x) => (float[3,4] y) {{
      r = Relu(x)
      y = Cast<to=1>(r) }}"""
    model, result = apply("infer-shapes,eliminate-noops,eliminate-identity", text)
    assert result.modified
    assert ops(model) == ["Relu"]
    assert model.graph.outputs[0].name == "y"


def test_in_if_subgraph_and_function():
    text = f"""<ir_version: 8, opset_import: ["" : 17, "local" : 1]>
    g (float[3,4] x, bool c) => (float[3,4] out) {{
      out = If(c) <then_branch = t () => (float[3,4] a) {{ a = local.F(x) }},
                   else_branch = e () => (float[3,4] b) {{ b = Relu(x) }}>
    }}
    <domain: "local", opset_import: ["" : 17]>
    F (x) => (y) {{ z = Transpose<perm=[0, 1]>(x)
      y = Relu(z) }}"""
    model, result = apply("eliminate-noops", text)
    assert result.modified
    assert [n.op_type for n in model.functions[("local", "F", "")]] == ["Relu"]

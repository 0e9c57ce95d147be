from __future__ import annotations

from tests.passes.cleanup._common import apply, ops

HEAD = '<ir_version: 8, opset_import: ["" : 17]>'


def test_reshape_reshape():
    text = f"""{HEAD}
    g (float[2,3,4] x) => (float[4,6] y) <int64[2] s1 = {{6, 4}}, int64[2] s2 = {{4, -1}}> {{
      a = Reshape(x, s1)
      y = Reshape(a, s2) }}"""
    model, result = apply("eliminate-reshapes,dce", text)
    assert result.modified
    assert ops(model) == ["Reshape"]


def test_zero_copies_middle_dim():
    text = f"""{HEAD}
    g (float[2,3,4] x) => (float[6,4] y) <int64[2] s1 = {{6, 4}}, int64[2] s2 = {{0, -1}}> {{
      a = Reshape(x, s1)
      y = Reshape(a, s2) }}"""
    model, result = apply("infer-shapes,eliminate-reshapes,dce", text)
    assert result.modified
    assert ops(model) == ["Reshape"]


def test_flatten_after_unsqueeze():
    text = f"""{HEAD}
    g (float[2,3,4] x) => (float[2,12] y) <int64[1] ax = {{1}}> {{
      a = Unsqueeze(x, ax)
      y = Flatten<axis=2>(a) }}"""
    model, result = apply("infer-shapes,eliminate-reshapes,dce", text)
    assert result.modified
    assert ops(model) == ["Reshape"]


def test_dynamic_target_stays():
    text = f"""{HEAD}
    g (float[2,3,4] x, int64[2] s2) => (float[6,4] y) <int64[2] s1 = {{6, 4}}> {{
      a = Reshape(x, s1)
      y = Reshape(a, s2) }}"""
    model, result = apply("eliminate-reshapes", text, check=False)
    assert not result.modified
    assert ops(model) == ["Reshape", "Reshape"]

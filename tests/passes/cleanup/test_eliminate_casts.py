from __future__ import annotations

import pytest

from tests.passes.cleanup._common import apply, ops

HEAD = '<ir_version: 8, opset_import: ["" : 17]>'


def test_round_trip_through_double_disappears():
    text = f"""{HEAD}
    g (float[3] x) => (float[3] y) {{ a = Cast<to=11>(x)
      b = Cast<to=1>(a)
      y = Relu(b) }}"""
    model, result = apply("eliminate-casts,dce", text)
    assert result.modified
    assert ops(model) == ["Relu"]


def test_exact_inner_cast_is_skipped():
    # int8 -> float is exact, so int8 -> float -> int32 is int8 -> int32
    text = f"""{HEAD}
    g (int8[3] x) => (int32[3] y) {{ a = Cast<to=1>(x)
      y = Cast<to=6>(a) }}"""
    model, result = apply("eliminate-casts,dce", text)
    assert result.modified
    assert ops(model) == ["Cast"]


@pytest.mark.parametrize("inner", [6, 10])  # float -> int32 truncates, float -> float16 rounds
def test_narrowing_cast_stays(inner):
    text = f"""{HEAD}
    g (float[3] x) => (float[3] y) {{ a = Cast<to={inner}>(x)
      y = Cast<to=1>(a) }}"""
    model, result = apply("eliminate-casts", text, check=False)
    assert not result.modified
    assert ops(model) == ["Cast", "Cast"]

from __future__ import annotations

import pytest

from tests.passes.cleanup._common import apply, ops

HEAD = '<ir_version: 8, opset_import: ["" : 17]>'
W = "float[2,1,1,1] w = {2.0, -1.0}"


@pytest.mark.parametrize(
    "addend, conv",
    [
        ("float[2,1,1] c = {0.5, 1.5}", "Conv(x, w)"),
        ("float[1,2,1,1] c = {0.5, 1.5}", "Conv(x, w, cb)"),
        ("float c = {3.0}", "Conv(x, w, cb)"),
    ],
)
def test_folds_per_channel_add(addend, conv):
    text = f"""{HEAD}
    g (float[1,1,3,3] x) => (float[1,2,3,3] y) <{W}, float[2] cb = {{1.0, 2.0}}, {addend}> {{
      k = {conv}
      y = Add(c, k) }}"""
    model, result = apply("fuse-conv-bias", text)
    assert result.modified
    assert ops(model) == ["Conv"]


@pytest.mark.parametrize(
    "addend",
    [
        "float[3,3] c = {1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0}",  # per position
        "float[2,1,1,1,1] c = {1.0, 2.0}",  # would change the rank
    ],
)
def test_keeps_other_addends(addend):
    text = f"""{HEAD}
    g (float[1,1,3,3] x) => (float[1,2,3,3] y) <{W}, {addend}> {{
      k = Conv(x, w)
      y = Add(k, c) }}"""
    model, result = apply("fuse-conv-bias", text, check=False)
    assert not result.modified
    assert ops(model) == ["Conv", "Add"]

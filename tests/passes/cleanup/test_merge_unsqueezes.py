from __future__ import annotations

import onnx_ir as ir

from onnxpress.passes import PassManager
from onnxpress.passes.cleanup import MergeUnsqueezesPass
from tests.passes.cleanup._common import apply, ops
from tests.util import model_from_text

PIPE = "infer-shapes,merge-unsqueezes,dce"


def axes_of(model: ir.Model) -> list[int]:
    (node,) = [n for n in model.graph if n.op_type == "Unsqueeze"]
    return ir.convenience.get_const_tensor(node.inputs[1]).numpy().tolist()


def test_two_unsqueezes_become_one():
    text = """<ir_version: 8, opset_import: ["" : 17]>
    g (int64[N] x) => (int64[N,1,1,1] y) <int64[2] a = {1, 2}, int64[1] b = {3}> {
      u = Unsqueeze(x, a)
      y = Unsqueeze(u, b) }"""
    for n in (2, 5):
        model, result = apply(PIPE, text, dims={"N": n})
    assert result.modified
    assert ops(model) == ["Unsqueeze"]
    assert axes_of(model) == [1, 2, 3]


def test_outer_axes_interleave_and_negative():
    # x [N, M] -> [1, N, M] -> [1, 1, N, M, 1]: the inner 1 moves right of the outer one.
    text = """<ir_version: 8, opset_import: ["" : 17]>
    g (float[N,M] x) => (float[1,1,N,M,1] y) <int64[1] a = {0}, int64[2] b = {0, -1}> {
      u = Unsqueeze(x, a)
      y = Unsqueeze(u, b) }"""
    for n in (1, 3):
        model, result = apply(PIPE, text, dims={"N": n, "M": 2})
    assert result.modified
    assert axes_of(model) == [0, 1, 4]


def test_attribute_axes_before_opset_13():
    text = """<ir_version: 7, opset_import: ["" : 11]>
    g (float[N,2] x) => (float[1,N,1,2] y) {
      u = Unsqueeze<axes = [0]>(x)
      y = Unsqueeze<axes = [2]>(u) }"""
    model, result = apply(PIPE, text, dims={"N": 3})
    assert result.modified
    (node,) = list(model.graph)
    assert list(node.attributes["axes"].as_ints()) == [0, 2]


def test_dynamic_axes_stay():
    text = """<ir_version: 8, opset_import: ["" : 17]>
    g (float[N,2] x, int64[1] a) => (float[?,?,?,?] y) <int64[1] b = {0}> {
      u = Unsqueeze(x, a)
      y = Unsqueeze(u, b) }"""
    model = model_from_text(text)
    PassManager.from_pipeline("infer-shapes")(model)
    result = MergeUnsqueezesPass()(model)
    assert not result.modified
    assert ops(model) == ["Unsqueeze", "Unsqueeze"]

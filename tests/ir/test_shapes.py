"""Shape glue: inference in place, --input-shape parsing, fixing symbolic input dims."""

from __future__ import annotations

import logging

import onnx_ir as ir
import pytest

from onnxpress.errors import InputError
from onnxpress.ir.shapes import infer_shapes, parse_input_shape, set_input_shapes
from tests.util import model_from_text

TEXT = """
<ir_version: 9, opset_import: ["": 18]>
g (float[N, 3, H, W] x, float[N, 4] v) => (float[N, 3, H, W] y) {
  y = Relu(x)
}
"""


def test_infer_shapes_fills_intermediate_values():
    model = model_from_text(
        """
        <ir_version: 9, opset_import: ["": 18]>
        g (float[2, 3] x) => (float[3, 2] y) {
          t = Transpose(x)
          y = Relu(t)
        }
        """
    )
    t = model.graph[0].outputs[0]
    assert t.shape is None
    assert infer_shapes(model) is True
    assert t.shape == ir.Shape([3, 2]) and t.dtype == ir.DataType.FLOAT
    assert infer_shapes(model) is False  # nothing new


def test_infer_shapes_never_raises(caplog):
    model = model_from_text(TEXT)
    model.graph[0].op_type = "NoSuchOp"
    model.opset_imports["com.example"] = 1
    model.graph[0].domain = "com.example"
    with caplog.at_level(logging.WARNING):
        assert infer_shapes(model) in (True, False)
    bad = ir.Model(ir.Graph([], [], nodes=[ir.Node("", "Add", inputs=[])], opset_imports={"": 18}), ir_version=9)
    assert infer_shapes(bad) is False


def test_parse_input_shape():
    assert parse_input_shape("x:1x3x224x224") == ("x", [1, 3, 224, 224])
    assert parse_input_shape("input:0:2,5") == ("input:0", [2, 5])
    assert parse_input_shape("ids:8") == ("ids", [8])
    for text in ("x", "x:", ":1x2", "x:1xx2", "x:1x-2", "x:ax3"):
        with pytest.raises(InputError, match="NAME:DIMS"):
            parse_input_shape(text)


def test_set_input_shapes():
    model = model_from_text(TEXT)
    set_input_shapes(model, {"x": [1, 3, 32, 32], "v": [1, 4]})
    assert model.graph.inputs[0].shape == ir.Shape([1, 3, 32, 32])
    assert model.graph.inputs[1].shape == ir.Shape([1, 4])


def test_set_input_shapes_errors_change_nothing():
    model = model_from_text(TEXT)
    before = [str(v.shape) for v in model.graph.inputs]
    with pytest.raises(InputError, match=r"no graph input named 'nope' \(inputs: v, x\)"):
        set_input_shapes(model, {"x": [1, 3, 8, 8], "nope": [1]})
    with pytest.raises(InputError, match="rank 2 given, but the input has rank 4"):
        set_input_shapes(model, {"x": [1, 3]})
    with pytest.raises(InputError, match="dim 1 is fixed to 3"):
        set_input_shapes(model, {"x": [1, 4, 8, 8]})
    with pytest.raises(InputError, match="non-negative"):
        set_input_shapes(model, {"v": [-1, 4]})
    assert [str(v.shape) for v in model.graph.inputs] == before

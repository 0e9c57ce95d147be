"""The ORT runner: in-memory models, weights memory-mapped from external data, new IR versions."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxpress.backends.ort import OrtRunner
from onnxpress.ir import load


def _matmul_model(ir_version: int) -> onnx.ModelProto:
    w = numpy_helper.from_array(np.arange(16, dtype=np.float32).reshape(4, 4), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])], [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = ir_version
    return model


def test_runs_model_with_external_data_loaded_from_disk(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(_matmul_model(10), str(path), save_as_external_data=True, location="m.data", size_threshold=0)
    model = load(str(path))
    x = np.ones((1, 4), np.float32)
    (out,) = OrtRunner().run(model, [{"x": x}])
    np.testing.assert_array_equal(out["y"], x @ np.arange(16, dtype=np.float32).reshape(4, 4))


def test_ir_version_newer_than_ort_accepts_still_runs():
    model = load(_matmul_model(onnx.IR_VERSION))
    (out,) = OrtRunner().run(model, [{"x": np.ones((1, 4), np.float32)}])
    assert out["y"].shape == (1, 4)
    assert model.ir_version == onnx.IR_VERSION  # the model itself is untouched

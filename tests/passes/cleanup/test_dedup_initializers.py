"""dedup-initializers: identical weights merged (in memory and memory-mapped), others untouched."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
from onnx import helper, numpy_helper

from onnxpress.ir import load
from onnxpress.passes import PassManager
from tests.util import assert_same_outputs


def _model(weights: dict[str, np.ndarray], graph_input_weight: str | None = None, dim: int = 4) -> onnx.ModelProto:
    names = list(weights)
    nodes, prev = [], "x"
    for i, name in enumerate(names):
        out = "y" if i == len(names) - 1 else f"h{i}"
        nodes.append(helper.make_node("MatMul", [prev, name], [out]))
        prev = out
    inputs = [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, dim])]
    if graph_input_weight:
        inputs.append(helper.make_tensor_value_info(graph_input_weight, onnx.TensorProto.FLOAT, [dim, dim]))
    graph = helper.make_graph(
        nodes, "g", inputs, [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, dim])],
        [numpy_helper.from_array(w, n) for n, w in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return model


def _weights(rng):
    a = rng.standard_normal((4, 4)).astype(np.float32)
    b = rng.standard_normal((4, 4)).astype(np.float32)
    return {"a": a, "b": b, "a2": a.copy(), "a3": a.copy(), "t": a.T.copy()}


def _feeds(rng):
    return [{"x": rng.standard_normal((2, 4)).astype(np.float32)} for _ in range(2)]


def test_merges_identical_in_memory_weights():
    rng = np.random.default_rng(0)
    proto = _model(_weights(rng))
    model = load(proto)
    result = PassManager.from_pipeline("dedup-initializers")(model)
    assert result.modified
    assert sorted(model.graph.initializers) == ["a", "b", "t"]
    assert [n.inputs[1].name for n in model.graph] == ["a", "b", "a", "a", "t"]
    assert_same_outputs(load(proto), model, _feeds(rng))


def test_merges_memory_mapped_weights_without_loading_them(tmp_path):
    rng = np.random.default_rng(1)
    path = tmp_path / "m.onnx"
    onnx.save(_model(_weights(rng)), str(path), save_as_external_data=True, location="m.data", size_threshold=0)
    model = load(str(path))
    assert all(isinstance(v.const_value, ir.ExternalTensor) for v in model.graph.initializers.values())
    pm = PassManager.from_pipeline("dedup-initializers")
    pm(model)
    assert pm.records[0].stats == {"merged": 2, "bytes_saved": 2 * 64}
    assert sorted(model.graph.initializers) == ["a", "b", "t"]
    assert_same_outputs(load(str(path)), model, _feeds(rng))


def test_leaves_graph_input_initializers_and_unique_weights_alone():
    rng = np.random.default_rng(2)
    w = _weights(rng)
    model = load(_model({"a": w["a"], "a2": w["a2"]}, graph_input_weight="a2"))
    assert not PassManager.from_pipeline("dedup-initializers")(model).modified
    model = load(_model({"a": w["a"], "b": w["b"]}))
    assert not PassManager.from_pipeline("dedup-initializers")(model).modified



def test_weights_equal_at_both_ends_but_different_inside_are_kept_apart():
    rng = np.random.default_rng(3)
    a = rng.standard_normal((256, 256)).astype(np.float32)  # 256 KiB: more than the two 64 KiB ends
    b = a.copy()
    b[128, 7] += 1.0  # same first and last 64 KiB, different middle
    model = load(_model({"a": a, "b": b, "a2": a.copy()}, dim=256))
    pm = PassManager.from_pipeline("dedup-initializers")
    pm(model)
    assert pm.records[0].stats["merged"] == 1
    assert sorted(model.graph.initializers) == ["a", "b"]

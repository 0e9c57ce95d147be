"""The legalization passes one by one: convert-opset, fix-shapes, remove-float-qdq, check-target-ops."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from onnxpress.api import RANDOM_DATA, optimize, resolve_pipeline
from onnxpress.backends.base import get_backend
from onnxpress.errors import InputError
from onnxpress.ir import load
from onnxpress.passes.legalize import ConvertOpsetPass, FixShapesPass, RemoveFloatQdqPass
from onnxpress.passes.manager import PassContext
from tests.backends._models import CONV_SHAPE, conv_model, conv_only_model, mlp_model
from tests.util import run


def _ctx(target: str) -> PassContext:
    return PassContext(target=target, capabilities=get_backend(target).capabilities)


def _ops(model) -> list[str]:
    return [n.op_type for n in model.graph]


@pytest.mark.parametrize("opset,options,expected,modified", [
    (9, {"min": 11, "max": 21}, 11, True),
    (25, {"min": 9, "max": 21}, 21, True),
    (17, {"min": 9, "max": 21}, 17, False),
])
def test_convert_opset_moves_into_the_range(tmp_path, opset, options, expected, modified):
    model = load(mlp_model(tmp_path / "m.onnx", opset=opset))
    feeds = [{"x": np.random.default_rng(0).normal(size=(2, 16)).astype(np.float32)}]
    before = run(model, feeds)
    with _ctx("tensorrt"):
        result = ConvertOpsetPass(ConvertOpsetPass.Options(**options))(model)
    assert result.modified is modified
    assert model.opset_imports[""] == expected
    np.testing.assert_allclose(run(model, feeds)[0]["y"], before[0]["y"], rtol=1e-6)


def test_fix_shapes_lists_every_symbolic_dim(tmp_path):
    model = load(conv_model(tmp_path / "m.onnx"))
    with _ctx("coreml"), pytest.raises(InputError) as error:
        FixShapesPass()(model)
    assert "target 'coreml' needs static input shapes" in str(error.value)
    assert "x: dim 0 (N)" in str(error.value) and "--input-shape x:1x3x16x16" in str(error.value)


def test_fix_shapes_propagates_fixed_inputs(tmp_path):
    from onnxpress.ir.shapes import set_input_shapes

    model = load(conv_model(tmp_path / "m.onnx"))
    set_input_shapes(model, CONV_SHAPE)
    with _ctx("qnn"):
        result = FixShapesPass()(model)
    assert result.stats["dynamic_values"] == 0
    assert list(model.graph.outputs[0].shape) == [1, 10]


def _cpu_quantized(tmp_path, build=conv_model):
    out = tmp_path / "cpu_int8.onnx"
    optimize(build(tmp_path / "m.onnx"), resolve_pipeline(target="cpu", fragments=[get_backend("cpu").quantize("int8")]),
             input_shapes=CONV_SHAPE if build is conv_model else None, data=RANDOM_DATA, output=out, placement="off")
    return str(out)


def test_pre_quantized_model_on_cuda_loses_every_qdq(tmp_path):
    src = _cpu_quantized(tmp_path)
    quantized = load(src)
    result = optimize(src, resolve_pipeline(target="cuda"), target="cuda", input_shapes=CONV_SHAPE, placement="off")
    ops = _ops(result.model)
    assert "QuantizeLinear" not in ops and "DequantizeLinear" not in ops
    stats = next(p["stats"] for p in result.report.passes if p["name"] == "remove-float-qdq")
    assert stats["pairs_removed"] > 0 and stats["weights_dequantized"] == 6  # 3 weights + 3 int32 biases
    feeds = [{"x": np.random.default_rng(1).normal(size=(1, 3, 16, 16)).astype(np.float32)}]
    got, want = run(result.model, feeds)[0]["prob"], run(quantized, feeds)[0]["prob"]
    assert np.abs(got - want).max() < 0.05  # the float model, which the quantized one approximates
    assert [v.name for v in result.model.graph.outputs] == ["prob"]


def test_tensorrt_strips_the_output_qdq_cpu_rules_place(tmp_path):
    src = conv_only_model(tmp_path / "m.onnx")
    result = optimize(src, resolve_pipeline(target="tensorrt", fragments=[get_backend("tensorrt").quantize("int8")]),
                      target="tensorrt", data=RANDOM_DATA, placement="off")
    stats = next(p["stats"] for p in result.report.passes if p["name"] == "remove-float-qdq")
    assert stats == {"pairs_removed": 1, "weights_dequantized": 0}
    output = result.model.graph.outputs[0]
    assert output.name == "y" and output.producer().op_type == "Conv"


def test_remove_float_qdq_keeps_what_the_target_fuses(tmp_path):
    model = load(_cpu_quantized(tmp_path))
    before = _ops(model)
    with _ctx("cpu"):
        result = RemoveFloatQdqPass()(model)
    assert not result.modified and _ops(model) == before
    with PassContext():  # no target: nothing to judge by
        assert RemoveFloatQdqPass()(model).stats == {"skipped": "no target capabilities"}


def test_check_target_ops_names_missing_ops(tmp_path):
    src = conv_model(tmp_path / "m.onnx")
    proto = onnx.load(src)
    proto.graph.node.append(onnx.helper.make_node("NonZero", ["prob"], ["nz"], name="nz"))
    proto.graph.output.append(onnx.helper.make_tensor_value_info("nz", onnx.TensorProto.INT64, None))
    onnx.save(proto, src)
    result = optimize(src, resolve_pipeline(target="qnn"), target="qnn", input_shapes=CONV_SHAPE, placement="off")
    assert any("target 'qnn' has no kernel for: NonZero x1" in d for d in result.report.diagnostics)

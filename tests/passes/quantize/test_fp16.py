"""convert-fp16: io types, fragile ops kept float32, clamping, subgraphs, ORT numerics."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper

from onnxpress.passes import PassManager
from onnxpress.passes.manager import PassContext
from onnxpress.passes.quantize.fp16 import ConvertFp16Pass
from tests.passes.pruning._models import Builder
from tests.util import model_from_text, run

F16, F32 = ir.DataType.FLOAT16, ir.DataType.FLOAT


def encoder_block() -> ir.Model:
    """x[2,8,32] -> MatMul+bias -> LayerNorm -> Gelu (Erf form) -> MatMul/√d -> mask Add -> Softmax,
    plus a decomposed norm (ReduceMean, Sub, Pow, Div by Sqrt) on a second output."""
    b = Builder(opset=17, seed=6)
    x = b.input("x", [2, 8, 32])
    h = b.op("Add", [b.op("MatMul", [x, b.init("w1", b.rand(32, 64) / 6)], name="fc1"), b.init("b1", b.rand(64))])
    h = b.op("LayerNormalization", [h, b.init("ln_g", b.rand(64, positive=True)), b.init("ln_b", b.rand(64))],
             name="ln", axis=-1)
    erf = b.op("Erf", [b.op("Div", [h, b.init("sqrt2", np.array(1.4142135, np.float32))])])
    h = b.op("Mul", [b.op("Mul", [h, b.op("Add", [erf, b.init("one", np.array(1.0, np.float32))])]),
                     b.init("half", np.array(0.5, np.float32))], name="gelu")
    scores = b.op("MatMul", [h, b.init("w2", b.rand(64, 8) / 8)], name="fc2")
    mask = np.zeros((1, 1, 8), np.float32)
    mask[..., -2:] = -1e9  # beyond float16: clamped to -65504, still masks
    logits = b.op("Add", [scores, b.init("mask", mask)], name="masked")
    y = b.op("Softmax", [logits], name="softmax", axis=-1)
    mean = b.op("ReduceMean", [h], name="mean", axes=[-1])
    centred = b.op("Sub", [h, mean])
    var = b.op("ReduceMean", [b.op("Pow", [centred, b.init("two", np.array(2.0, np.float32))])], axes=[-1])
    z = b.op("Div", [centred, b.op("Sqrt", [b.op("Add", [var, b.init("eps", np.array(1e-12, np.float32))])])],
             name="norm_div")
    return b.model([y, z])


def feeds() -> list[dict]:
    rng = np.random.default_rng(2)
    return [{"x": rng.standard_normal((2, 8, 32)).astype(np.float32)} for _ in range(2)]


def node_named(model: ir.Model, name: str) -> ir.Node:
    return next(n for n in model.graph if n.name == name)


def test_keep_io_keeps_boundaries_and_fragile_ops_float32() -> None:
    model = encoder_block()
    data = feeds()
    reference = run(model, data)
    ctx = PassContext()
    with ctx:
        result = ConvertFp16Pass()(model)
    stats = result.stats
    assert result.modified and stats["nodes_converted"] >= 8 and stats["casts_inserted"] >= 4
    assert [v.dtype for v in model.graph.inputs] == [F32] and [v.dtype for v in model.graph.outputs] == [F32, F32]
    assert [v.name for v in model.graph.outputs] == ["softmax_out0", "norm_div_out0"]
    assert node_named(model, "fc1").outputs[0].dtype == F16 and node_named(model, "gelu").outputs[0].dtype == F16
    for kept in ("ln", "softmax", "norm_div"):  # LayerNorm, Softmax, Div by sqrt(var + eps)
        node = node_named(model, kept)
        assert all(v.dtype == F32 for v in (*node.inputs, *node.outputs) if v is not None), kept
    assert node_named(model, "mean").outputs[0].dtype == F16  # 64 elements: small enough for float16
    assert stats["kept_float"]["fragile (LayerNormalization)"] == 1
    assert model.graph.initializers["w1"].dtype == F16 and model.graph.initializers["ln_g"].dtype == F32
    assert stats["clamped"] == 2 and any("clamped" in d for d in ctx.diagnostics)
    assert stats["bytes_after"] * 2 == stats["bytes_before"]
    onnx.checker.check_model(ir.serde.serialize_model(model), full_check=True)
    for ref, got in zip(reference, run(model, data)):
        assert got["softmax_out0"].dtype == np.float32
        np.testing.assert_allclose(got["softmax_out0"], ref["softmax_out0"], atol=5e-3)
        np.testing.assert_allclose(got["norm_div_out0"], ref["norm_div_out0"], atol=2e-2, rtol=1e-2)


def test_without_keep_io_the_interface_is_float16() -> None:
    model = encoder_block()
    data = feeds()
    reference = run(model, data)
    ConvertFp16Pass(keep_io=False)(model)
    assert [v.dtype for v in model.graph.inputs] == [F16] and [v.dtype for v in model.graph.outputs] == [F16, F16]
    half = [{"x": f["x"].astype(np.float16)} for f in data]
    for ref, got in zip(reference, run(model, half)):
        assert got["softmax_out0"].dtype == np.float16
        np.testing.assert_allclose(got["softmax_out0"].astype(np.float32), ref["softmax_out0"], atol=5e-3)


def test_block_by_type_and_name_and_fragile_off() -> None:
    model = encoder_block()
    result = ConvertFp16Pass(block=("Erf", "fc2"), fragile=False)(model)
    assert node_named(model, "fc2").outputs[0].dtype == F32
    assert node_named(model, "ln").outputs[0].dtype == F16
    assert result.stats["kept_float"] == {"blocked": 2}
    run(model, feeds())


def test_subgraphs_stay_float32_and_read_outer_values_through_casts() -> None:
    then_graph = helper.make_graph(
        [helper.make_node("Mul", ["h", "h"], ["t"])], "then", [], [helper.make_tensor_value_info("t", TensorProto.FLOAT, None)])
    else_graph = helper.make_graph(
        [helper.make_node("Neg", ["h"], ["e"])], "else", [], [helper.make_tensor_value_info("e", TensorProto.FLOAT, None)])
    b = Builder(opset=17, seed=3)
    x = b.input("x", [4, 16])
    b.op("MatMul", [x, b.init("w", b.rand(16, 16))], name="fc", outputs=["h"])
    positive = b.op("Cast", [b.op("Greater", [x, b.init("zero", np.array(0.0, np.float32))])], to=TensorProto.INT32)
    flag = b.op("Cast", [b.op("ReduceMax", [positive], keepdims=0)], to=TensorProto.BOOL)
    y = b.op("If", [flag], name="branch", then_branch=then_graph, else_branch=else_graph)
    b.value_info.append(helper.make_tensor_value_info(y, TensorProto.FLOAT, [4, 16]))
    model = b.model([y])
    data = [{"x": np.random.default_rng(0).standard_normal((4, 16)).astype(np.float32)}]
    reference = run(model, data)
    result = ConvertFp16Pass()(model)
    assert node_named(model, "fc").outputs[0].dtype == F16
    branch = node_named(model, "branch")
    assert result.stats["kept_float"]["control flow"] == 1
    for body in branch.attributes["then_branch"].as_graph(), branch.attributes["else_branch"].as_graph():
        cast = next(iter(body))
        assert cast.op_type == "Cast" and cast.inputs[0].name == "h" and cast.outputs[0].dtype == F32
    got = run(model, data)[0]
    np.testing.assert_allclose(got[y], reference[0][y], rtol=1e-2, atol=5e-2)


def test_nothing_float_nothing_changed_and_options_text() -> None:
    model = model_from_text("""<ir_version: 8, opset_import: ["" : 17]>
        g (int64[3] i) => (int64[3] y) <int64[1] one = {1}> { y = Add(i, one) }""")
    assert not ConvertFp16Pass()(model).modified
    pm = PassManager.from_pipeline("convert-fp16{keep-io=false block=Gelu,attn/Softmax}")
    assert pm.passes[0].options.block == ("Gelu", "attn/Softmax")
    assert pm.to_text() == "convert-fp16{keep-io=false block=Gelu,attn/Softmax}"
    with pytest.raises(Exception):
        PassManager.from_pipeline("convert-fp16{keep-ios=false}")


def test_cast_to_float_feeding_float16_casts_to_float16_directly() -> None:
    b = Builder(opset=17, seed=1)
    h = b.op("MatMul", [b.input("x", [2, 8]), b.init("w", b.rand(8, 8))], name="fc")
    bias = b.op("Cast", [b.input("ids", [2, 8], TensorProto.INT64)], name="to_float", to=TensorProto.FLOAT)
    y = b.op("Add", [h, bias], name="add")
    model = b.model([y])
    data = [{"x": np.ones((2, 8), np.float32), "ids": np.arange(16).reshape(2, 8)}]
    reference = run(model, data)[0][y]
    result = ConvertFp16Pass()(model)
    cast = node_named(model, "to_float")
    assert cast.attributes["to"].as_int() == TensorProto.FLOAT16 and cast.outputs[0].dtype == F16
    assert result.stats["casts_inserted"] == 2  # x to float16, the output back to float32
    np.testing.assert_allclose(run(model, data)[0][y], reference, rtol=1e-2, atol=1e-2)

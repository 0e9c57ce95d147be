"""Every built-in target: default pipelines and `--quantize` kinds give models the checker accepts,
and each target's rules hold structurally (TensorRT symmetric / float bias / no output QDQ, QNN
static shapes and whole-graph QDQ, fp16 targets keep their IO types)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from onnxpress.api import RANDOM_DATA, optimize, resolve_pipeline
from onnxpress.backends.base import BUILTIN_TARGETS, get_backend
from onnxpress.cli import optimize_main
from onnxpress.errors import InputError
from tests.backends._models import CONV_SHAPE, MLP_SHAPE, conv_model, conv_only_model, mlp_model

MODELS = {"conv": (conv_model, CONV_SHAPE), "mlp": (mlp_model, MLP_SHAPE),
          "convs": (conv_only_model, {"x": [1, 3, 8, 8]})}
SMALL = ("conv", "mlp")


def _run(tmp_path, target: str, model: str = "conv", kind: str | None = None, **kwargs):
    build, shapes = MODELS[model]
    src = build(tmp_path / f"{model}.onnx")
    out = tmp_path / f"{model}.{target}.{kind or 'O2'}.onnx"
    fragments = [get_backend(target).quantize(kind)] if kind else []
    result = optimize(src, resolve_pipeline(target=target, fragments=fragments), target=target,
                      input_shapes=shapes, output=out, data=RANDOM_DATA if kind in ("int8", "int16") else None,
                      **kwargs)
    proto = onnx.load(str(out))
    onnx.checker.check_model(proto, full_check=True)
    return result, proto


def _cases():
    for target in BUILTIN_TARGETS:
        kinds = [None, *(k for k in ("int8", "int16", "fp16") if k in get_backend(target).quantize_fragments)]
        for kind in kinds:
            for model in SMALL:
                yield pytest.param(target, kind, model, id=f"{target}-{kind or 'O2'}-{model}")


@pytest.mark.parametrize("target,kind,model", list(_cases()))
def test_pipeline_yields_a_valid_model(tmp_path, target, kind, model):
    result, proto = _run(tmp_path, target, model, kind)
    lo, hi = get_backend(target).capabilities.opset_range
    opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    assert lo <= opset <= hi
    assert {o.domain for o in proto.opset_import} <= {"", "com.microsoft"}
    ops = {n.op_type for n in proto.graph.node}
    if kind in ("int8", "int16"):
        assert "QuantizeLinear" in ops
    assert result.report.target == target


def test_cpu_pipeline_is_the_plain_level():
    assert resolve_pipeline(target="cpu") == "O2"
    assert resolve_pipeline("dce", target="cpu", fragments=["cse"]) == "dce,cse"
    text = resolve_pipeline(target="qnn", fragments=["convert-fp16"])
    assert text.startswith("convert-opset{min=11 max=21},fix-shapes,O2,convert-fp16,")
    assert text.endswith("remove-float-qdq,check-target-ops")


def test_print_pipeline_shows_the_target_meaning_of_quantize(capsys):
    assert optimize_main(["--print-pipeline", "--target", "tensorrt", "--quantize", "int8"]) == 0
    out = capsys.readouterr().out
    assert "quantize-qdq{activations=int8 symmetric-activations=true bias=float}" in out
    assert out.strip().endswith("remove-float-qdq,check-target-ops") and out.startswith("convert-opset{min=9")
    assert optimize_main(["--print-pipeline", "--target", "cpu", "--quantize", "int8"]) == 0
    assert capsys.readouterr().out.strip().endswith("quantize-qdq")  # uint8/int8 per-channel are the defaults
    assert optimize_main(["--print-pipeline", "--target", "qnn", "--quantize", "int16"]) == 0
    assert "activations=uint16 weights=uint8 per-channel=false symmetric-weights=false" in capsys.readouterr().out


@pytest.mark.parametrize("target,kind", [("cuda", "int8"), ("dml", "int8"), ("cpu", "int16"), ("coreml", "int4"),
                                         ("tensorrt", "dynamic")])
def test_quantize_kind_a_target_lacks_is_refused_in_one_line(target, kind, capsys):
    assert optimize_main(["--print-pipeline", "--target", target, "--quantize", kind]) == 2
    err = capsys.readouterr().err
    assert f"--quantize {kind} is not available for target '{target}'" in err and "Traceback" not in err


# -- TensorRT ------------------------------------------------------------------------------------
def _const(proto: onnx.ModelProto, name: str) -> np.ndarray | None:
    for t in proto.graph.initializer:
        if t.name == name:
            return onnx.numpy_helper.to_array(t)
    return None


@pytest.mark.parametrize("model", ["conv", "mlp", "convs"])
def test_tensorrt_int8_is_symmetric_with_float_bias_and_no_output_qdq(tmp_path, model):
    _, proto = _run(tmp_path, "tensorrt", model, "int8")
    produced = {o: n for n in proto.graph.node for o in n.output}
    qs = [n for n in proto.graph.node if n.op_type == "QuantizeLinear"]
    assert qs
    for node in proto.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            zp = _const(proto, node.input[2]) if len(node.input) > 2 else None
            assert zp is not None and zp.dtype == np.int8 and not zp.any(), node.name  # symmetric int8
        if node.op_type in ("Conv", "Gemm") and len(node.input) > 2:
            bias = node.input[2]
            assert _const(proto, bias) is not None and _const(proto, bias).dtype == np.float32, bias
    for out in proto.graph.output:  # no Q/DQ on what only the caller reads
        assert produced[out.name].op_type != "DequantizeLinear", out.name
    readers = {}
    for n in proto.graph.node:
        for i in n.input:
            readers.setdefault(i, []).append(n.op_type)
    trt_ops = get_backend("tensorrt").capabilities.qdq_ops
    for dq in (n for n in proto.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in produced):
        assert set(readers.get(dq.output[0], [])) & trt_ops, f"Q/DQ on {dq.output[0]} feeds only float ops"
    assert get_backend("tensorrt").provider_options(onnx_ir_model(proto))["trt_int8_enable"] == "True"


def onnx_ir_model(proto):
    import onnx_ir as ir

    return ir.serde.deserialize_model(proto)


# -- QNN -----------------------------------------------------------------------------------------
def test_qnn_needs_static_shapes_with_a_clear_error(tmp_path, capsys):
    src = conv_model(tmp_path / "conv.onnx")
    with pytest.raises(InputError, match=r"target 'qnn' needs static input shapes.*x: dim 0 \(N\)"):
        optimize(src, resolve_pipeline(target="qnn"), target="qnn")
    code = optimize_main([src, "--target", "qnn", "-o", str(tmp_path / "out.onnx")])
    err = capsys.readouterr().err
    assert code == 2 and "--input-shape x:1x3x16x16" in err and "Traceback" not in err
    assert not (tmp_path / "out.onnx").exists()
    assert optimize_main([src, "--target", "qnn", "--input-shape", "x:1x3x16x16", "-o", str(tmp_path / "out.onnx"),
                          "-q"]) == 0
    dims = [d.dim_value for d in onnx.load(str(tmp_path / "out.onnx")).graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 3, 16, 16]


@pytest.mark.parametrize("kind,dtype", [("int8", np.uint8), ("int16", np.uint16)])
def test_qnn_quantizes_every_compute_op(tmp_path, kind, dtype):
    _, proto = _run(tmp_path, "qnn", "conv", kind)
    produced = {o: n for n in proto.graph.node for o in n.output}
    for node in proto.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear", "Relu"):  # Relu fuses into the Conv before it
            continue
        data = [i for i in node.input if i and _const(proto, i) is None]
        assert data and all(produced.get(i) is not None and produced[i].op_type == "DequantizeLinear" for i in data), \
            f"{node.op_type} {node.name} reads float"
        assert all(r.op_type == "QuantizeLinear" for o in node.output for r in proto.graph.node if o in r.input) \
            or node.op_type in ("Conv",), node.name
    acts = {_const(proto, n.input[2]).dtype for n in proto.graph.node
            if n.op_type == "QuantizeLinear" and len(n.input) > 2}
    assert acts == {np.dtype(dtype)}
    assert [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim] == CONV_SHAPE["x"]


# -- fp16 targets --------------------------------------------------------------------------------
@pytest.mark.parametrize("target", ["cuda", "tensorrt", "dml"])
def test_fp16_targets_keep_io_types(tmp_path, target):
    assert get_backend(target).capabilities.prefers_fp16
    for model in SMALL:
        _, proto = _run(tmp_path, target, model, "fp16")
        assert [v.type.tensor_type.elem_type for v in (*proto.graph.input, *proto.graph.output)] == \
            [onnx.TensorProto.FLOAT] * 2
        assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in proto.graph.initializer)
        produced = {o: n for n in proto.graph.node for o in n.output}
        softmax = next(n for n in proto.graph.node if n.op_type == "Softmax")  # fragile: kept float32
        cast = produced[softmax.input[0]]
        assert cast.op_type == "Cast" and cast.attribute[0].i == onnx.TensorProto.FLOAT

"""The placement check on the CPU EP for real: every node on CPUExecutionProvider, and ORT fusing the
QDQ units the cpu target places into integer kernels (the profiler names the kernels that ran)."""

from __future__ import annotations

import json

import numpy as np

from onnxpress.api import RANDOM_DATA, optimize, resolve_pipeline
from onnxpress.backends.base import get_backend
from onnxpress.cli import optimize_main
from tests.backends._models import CONV_SHAPE, MLP_SHAPE, conv_model, mlp_model

INTEGER_KERNELS = {"QLinearConv", "QLinearAdd", "QLinearGlobalAveragePool", "QGemm", "QLinearMatMul",
                   "MatMulIntegerToFloat", "QLinearSoftmax", "MatMulInteger", "DynamicQuantizeMatMul"}


def _quantized(tmp_path, build, shapes):
    text = resolve_pipeline(target="cpu", fragments=[get_backend("cpu").quantize("int8")])
    return optimize(build(tmp_path / "m.onnx"), text, input_shapes=shapes, data=RANDOM_DATA)


def test_every_node_runs_on_cpu_and_qdq_becomes_integer_kernels(tmp_path):
    result = _quantized(tmp_path, conv_model, CONV_SHAPE)
    placement = result.report.placement
    assert placement["checked"] and placement["target_provider"] == "CPUExecutionProvider"
    assert placement["fallback"] == [] and set(placement["by_provider"]) == {"CPUExecutionProvider"}
    assert all(n["provider"] == "CPUExecutionProvider" for n in placement["nodes"])
    ops = placement["op_types"]
    assert ops.get("QLinearConv") == 2 and ops.get("QLinearAdd") == 1 and ops.get("QGemm") == 1
    assert "Conv" not in ops and "Relu" not in ops


def test_mlp_runs_integer_matmuls_on_cpu(tmp_path):
    placement = _quantized(tmp_path, mlp_model, MLP_SHAPE).report.placement
    assert placement["fallback"] == []
    assert set(placement["op_types"]) & INTEGER_KERNELS
    assert "MatMul" not in placement["op_types"]


def test_placement_is_printed_and_can_be_turned_off(tmp_path, capsys):
    src = conv_model(tmp_path / "m.onnx")
    assert optimize_main([src, "-o", str(tmp_path / "o.onnx"), "--input-shape", "x:1x3x16x16"]) == 0
    out = capsys.readouterr().out
    assert "placement:" in out and "on CPUExecutionProvider" in out
    report = tmp_path / "r.json"
    assert optimize_main([src, "-o", str(tmp_path / "o2.onnx"), "--placement", "off", "--report", str(report)]) == 0
    assert "placement:" not in capsys.readouterr().out
    assert json.loads(report.read_text())["placement"] is None


def test_symbolic_dims_still_get_a_placement_from_random_feeds(tmp_path):
    result = optimize(mlp_model(tmp_path / "m.onnx"), target="cpu")
    assert result.report.placement["checked"], result.report.placement
    assert np.all([n["provider"] == "CPUExecutionProvider" for n in result.report.placement["nodes"]])

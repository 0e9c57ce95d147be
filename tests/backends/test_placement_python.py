"""The placement check under another interpreter (`python=` / $ONNXPRESS_PLACEMENT_PYTHON), as the
OpenVINO EP needs it: `onnxruntime-openvino` replaces the plain package, so it lives in its own venv.
Here the "other" interpreter is this one run as a subprocess (its onnxruntime has the CPU EP only),
and the partition-level result the OpenVINO EP gives is checked on a recorded probe result."""

from __future__ import annotations

import ast
import sys

import numpy as np
import pytest

from onnxpress.api import optimize
from onnxpress.backends import placement as pl
from onnxpress.backends.base import get_backend
from onnxpress.ir.io import load
from tests.backends._models import conv_model

FEED = {"x": np.random.default_rng(0).standard_normal((1, 3, 16, 16)).astype(np.float32)}


@pytest.fixture(autouse=True)
def _no_env_python(monkeypatch):
    monkeypatch.delenv(pl.PLACEMENT_PYTHON_ENV, raising=False)


def test_probe_under_another_interpreter_matches_the_in_process_check(tmp_path):
    model = load(conv_model(tmp_path / "m.onnx"))
    here = get_backend("cpu").check_placement(model, [FEED])
    there = get_backend("cpu").check_placement(model, [FEED], python=sys.executable)
    assert there["checked"] and there["python"] == sys.executable and here["python"] is None
    assert there["fallback"] == [] and set(there["by_provider"]) == {"CPUExecutionProvider"}
    assert there["op_types"] == here["op_types"] and there["absorbed"] == here["absorbed"]
    assert there["granularity"] == "node" and there["partitions"] == []


def test_missing_provider_under_the_interpreter_is_reported_not_guessed(tmp_path):
    model = load(conv_model(tmp_path / "m.onnx"))
    result = get_backend("openvino").check_placement(model, [FEED], python=sys.executable)
    assert not result["checked"] and result["target_provider"] == "OpenVINOExecutionProvider"
    assert f"(python: {sys.executable})" in result["reason"] and "CPUExecutionProvider" in result["reason"]


def test_interpreter_that_does_not_exist_gives_one_line(tmp_path):
    model = load(conv_model(tmp_path / "m.onnx"))
    result = get_backend("cpu").check_placement(model, [FEED], python=str(tmp_path / "no-python"))
    assert not result["checked"] and "no Python interpreter at" in result["reason"]
    assert "\n" not in result["reason"]


def test_ir_version_newer_than_the_interpreters_onnxruntime_is_retried(tmp_path):
    model = load(conv_model(tmp_path / "m.onnx"))
    model.ir_version = 99
    result = get_backend("cpu").check_placement(model, [FEED], python=sys.executable)
    assert result["checked"], result
    assert model.ir_version == 99  # the model itself is not changed


def test_environment_variable_reaches_the_check_through_optimize(tmp_path, monkeypatch):
    monkeypatch.setenv(pl.PLACEMENT_PYTHON_ENV, sys.executable)
    result = optimize(conv_model(tmp_path / "m.onnx"), target="cpu", input_shapes={"x": [1, 3, 16, 16]})
    assert result.report.placement["checked"] and result.report.placement["python"] == sys.executable


def test_openvino_partition_result_is_summarized_per_partition(tmp_path):
    # The shape of what onnxruntime-openvino 1.24.1 reports (tools/bench/openvino.py): one kernel for
    # the compiled partition, the node it could not take (Det) on the CPU EP under its own name.
    model = load(conv_model(tmp_path / "m.onnx"))
    raw = {"ok": True, "onnxruntime": "1.24.1", "session_providers": ["OpenVINOExecutionProvider", "CPUExecutionProvider"],
           "kernels": [{"name": "OpenVINOExecutionProvider_OpenVINO-EP-subgraph_1_0", "op_type": "OpenVINO-EP-subgraph_1",
                        "provider": "OpenVINOExecutionProvider"},
                       {"name": "softmax", "op_type": "Softmax", "provider": "CPUExecutionProvider"}]}
    result = pl._summarize(model, "OpenVINOExecutionProvider", raw, "/venv/bin/python")
    assert result["granularity"] == "partition"
    assert result["partitions"] == ["OpenVINOExecutionProvider_OpenVINO-EP-subgraph_1_0"]
    assert result["fallback"] == ["softmax"]
    assert result["absorbed"] == [n.name for n in model.graph if n.name != "softmax"]
    assert result["by_provider"] == {"CPUExecutionProvider": 1, "OpenVINOExecutionProvider": 1}


def test_probe_script_imports_nothing_but_stdlib_numpy_and_onnxruntime():
    tree = ast.parse(pl._PROBE.read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module and node.level == 0}
    assert imported <= set(sys.stdlib_module_names) | {"numpy", "onnxruntime"}, imported

"""The `openvino` target's shape advice: the OpenVINO EP compiles a model with symbolic input dims
for dynamic shapes, which ran 4-15 % slower than with the inputs fixed on the models of
tools/bench/openvino.py (docs/BENCHMARKS.md), so emit warns about such inputs and stays quiet once
`--input-shape` fixed them."""

from __future__ import annotations

import logging

from onnxpress.api import optimize
from onnxpress.backends.base import get_backend
from onnxpress.cli import optimize_main
from tests.backends._models import conv_model

LOGGER = "onnxpress.backends._target"


def test_openvino_prefers_static_shapes_without_requiring_them():
    caps = get_backend("openvino").capabilities
    assert caps.static_shapes_preferred and not caps.static_shapes_required
    assert "fix-shapes" not in get_backend("openvino").prelude()
    assert not get_backend("cpu").capabilities.static_shapes_preferred


def test_emit_warns_about_symbolic_input_dims(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        optimize(conv_model(tmp_path / "m.onnx"), target="openvino", output=tmp_path / "o.onnx", placement="off")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "x: dim 0 (N)" in warnings[0] and "--input-shape" in warnings[0]


def test_fixed_shapes_or_other_targets_do_not_warn(tmp_path, caplog):
    src = conv_model(tmp_path / "m.onnx")
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        optimize(src, target="openvino", input_shapes={"x": [1, 3, 16, 16]}, output=tmp_path / "a.onnx",
                 placement="off")
        optimize(src, target="cpu", output=tmp_path / "b.onnx", placement="off")
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_cli_warns_once(tmp_path, caplog):
    src = conv_model(tmp_path / "m.onnx")
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert optimize_main([src, "-o", str(tmp_path / "o.onnx"), "--target", "openvino", "--placement", "off"]) == 0
    assert sum("symbolic input dims" in r.getMessage() for r in caplog.records) == 1

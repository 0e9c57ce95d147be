"""Emission and the recipe: unused opsets dropped, metadata recorded, `--replay` reproduces bytes."""

from __future__ import annotations

import hashlib
import json

import onnx
import pytest

from onnxpress.api import optimize, replay
from onnxpress.backends.recipe import PREFIX, read_recipe
from onnxpress.cli import optimize_main
from onnxpress.errors import InputError
from onnxpress.report import onnxpress_version
from tests.backends._models import conv_model


def _sha(path) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def test_emit_drops_unused_opsets_and_records_the_recipe(tmp_path):
    src = conv_model(tmp_path / "m.onnx", extra_opsets={"com.microsoft": 1, "ai.onnx.ml": 3})
    out = tmp_path / "out.onnx"
    result = optimize(src, target="openvino", output=out, placement="off")
    proto = onnx.load(str(out))
    assert [o.domain for o in proto.opset_import] == [""]
    props = {p.key: p.value for p in proto.metadata_props}
    assert props[PREFIX + "pipeline"] == result.report.pipeline
    assert props[PREFIX + "pipeline"].startswith("convert-opset{max=22},infer-shapes,fixpoint(")
    assert props[PREFIX + "target"] == "openvino"
    assert props[PREFIX + "version"] == onnxpress_version()
    assert props[PREFIX + "input_sha256"] == _sha(src)
    assert PREFIX + "input_shapes" not in props and PREFIX + "data" not in props


@pytest.mark.parametrize("target,flags", [
    ("tensorrt", ["--quantize", "int8"]),
    ("qnn", ["--quantize", "int8", "--input-shape", "x:1x3x16x16"]),
    ("cuda", ["--quantize", "fp16"]),
])
def test_replay_reproduces_the_model_byte_for_byte(tmp_path, target, flags, capsys):
    src = conv_model(tmp_path / "m.onnx")
    first, second = tmp_path / "first.onnx", tmp_path / "second.onnx"
    assert optimize_main([src, "--target", target, *flags, "-o", str(first), "-q"]) == 0
    assert optimize_main(["--replay", str(first), src, "-o", str(second), "-q"]) == 0, capsys.readouterr().err
    assert _sha(first) == _sha(second)
    recipe = read_recipe(first)
    assert recipe.target == target and recipe.input_sha256 == _sha(src)
    if target == "qnn":
        assert recipe.input_shapes == {"x": [1, 3, 16, 16]}


def test_replay_on_a_new_input(tmp_path):
    old, new = conv_model(tmp_path / "old.onnx", seed=0), conv_model(tmp_path / "new.onnx", seed=7)
    made = tmp_path / "old.opt.onnx"
    assert optimize_main([old, "--target", "qnn", "--quantize", "int8", "--input-shape", "x:1x3x16x16",
                          "-o", str(made), "-q"]) == 0
    result = replay(made, new, output=tmp_path / "new.opt.onnx", placement="off")
    recipe, replayed = read_recipe(made), read_recipe(tmp_path / "new.opt.onnx")
    assert replayed.pipeline == recipe.pipeline and replayed.target == "qnn"
    assert replayed.input_sha256 == _sha(new) != recipe.input_sha256
    assert replayed.input_shapes == {"x": [1, 3, 16, 16]} and replayed.data == "random"
    assert "QuantizeLinear" in [n.op_type for n in result.model.graph]


def _unwrapped(text: str) -> str:
    """The CLI's error line as one line (the console wraps long tmp paths at the terminal width)."""
    return " ".join(text.split())


def test_replay_refuses_contradicting_flags_and_recipe_less_models(tmp_path, capsys):
    src = conv_model(tmp_path / "m.onnx")
    made = tmp_path / "made.onnx"
    assert optimize_main([src, "-o", str(made), "-q"]) == 0
    assert optimize_main(["--replay", str(made), src, "--quantize", "int8"]) == 2
    assert "drop --quantize" in _unwrapped(capsys.readouterr().err)
    assert optimize_main(["--replay", src, src, "-o", str(tmp_path / "x.onnx")]) == 2
    assert "carries no onnxpress recipe" in _unwrapped(capsys.readouterr().err)
    with pytest.raises(InputError, match="no such file"):
        read_recipe(tmp_path / "missing.onnx")
    assert optimize_main(["--replay", str(made), "--print-pipeline"]) == 0
    assert capsys.readouterr().out.strip() == read_recipe(made).pipeline


def test_report_json_keeps_its_keys_and_adds_placement(tmp_path):
    src = conv_model(tmp_path / "m.onnx")
    report = tmp_path / "r.json"
    assert optimize_main([src, "--target", "tensorrt", "-o", str(tmp_path / "o.onnx"), "--report", str(report),
                          "-q"]) == 0
    data = json.loads(report.read_text())
    assert {"schema", "pipeline", "before", "after", "passes", "target", "verify"} <= set(data)
    assert data["placement"]["checked"] is False
    assert "TensorrtExecutionProvider is not in this onnxruntime build" in data["placement"]["reason"]

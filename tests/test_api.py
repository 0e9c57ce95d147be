"""The Python API: optimize / load / save / Result, verify modes, inputs never modified."""

from __future__ import annotations

import os

import numpy as np
import onnx_ir as ir
import pytest

import onnxpress
from onnxpress.errors import InputError
from tests.util import assert_same_outputs, model_from_text, random_feeds

EXAMPLE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples", "tiny_resnet.onnx")

MODEL = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[N,4] x) => (float[N,3] y) <float[4,3] w = {1.,2.,3.,4.,5.,6.,7.,8.,9.,10.,11.,12.}, float[3] b = {1.,2.,3.}> {
    a = Identity(x)
    m = MatMul(a, w)
    y = Add(m, b)
}
"""


def test_optimize_ir_model_leaves_input_untouched():
    model = model_from_text(MODEL)
    ops_before = [n.op_type for n in model.graph]
    result = onnxpress.optimize(model, "O2")
    assert [n.op_type for n in model.graph] == ops_before
    assert [n.op_type for n in result.model.graph] == ["Gemm"]  # x is 2-D, so MatMul + Add is a Gemm
    assert result.report.verify == "structure"
    assert result.report.fidelity is None
    assert_same_outputs(model, result.model, random_feeds(model, dims={"N": 3}))


def test_optimize_with_data_measures_fidelity_and_saves(tmp_path):
    model = model_from_text(MODEL)
    feeds = random_feeds(model, n=3, dims={"N": 1})
    out = tmp_path / "out.onnx"
    result = onnxpress.optimize(model, "O2", data=feeds, output=out)
    assert result.report.verify == "numeric"
    fid = result.report.fidelity["y"]
    assert fid.max_abs_error < 1e-5 and fid.cosine > 0.999999
    assert out.exists()
    reloaded = onnxpress.load(str(out))
    assert_same_outputs(model, reloaded, feeds)
    data = result.report.to_dict()
    assert data["before"]["nodes"] == 3 and data["after"]["nodes"] == len(result.model.graph)


def test_optimize_from_path_and_result_save(tmp_path):
    result = onnxpress.optimize(EXAMPLE, verify="numeric", input_shapes={"input": [1, 3, 32, 32]})
    assert result.report.input_path == EXAMPLE and result.report.output_path is None
    assert result.report.after["nodes"] < result.report.before["nodes"]
    assert result.report.fidelity["logits"].cosine > 0.99999
    result.save(tmp_path / "r.onnx")
    assert (tmp_path / "r.onnx").exists()


def test_pass_manager_from_pipeline_and_save_load_round_trip(tmp_path):
    model = onnxpress.load(EXAMPLE)
    pm = onnxpress.PassManager.from_pipeline("fold-constants,eliminate-identity,dce")
    pm(model)
    assert [r.name for r in pm.records] == ["fold-constants", "eliminate-identity", "dce"]
    onnxpress.save(model, tmp_path / "m.onnx")
    feeds = [{"input": np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)}]
    assert_same_outputs(onnxpress.load(EXAMPLE), onnxpress.load(str(tmp_path / "m.onnx")), feeds)


def test_bad_arguments():
    with pytest.raises(InputError, match="unknown verify mode"):
        onnxpress.optimize(EXAMPLE, verify="sometimes")
    with pytest.raises(InputError, match="refusing to overwrite"):
        onnxpress.optimize(EXAMPLE, output=EXAMPLE)
    with pytest.raises(onnxpress.PipelineError, match="unknown pass"):
        onnxpress.optimize(EXAMPLE, "no-such-pass")


def test_resolve_pipeline_appends_fragments():
    assert onnxpress.resolve_pipeline(level=0) == "O0"
    assert onnxpress.resolve_pipeline("O1", fragments=["dce"]) == "O1,dce"
    assert onnxpress.resolve_pipeline(fragments=["cse"]) == "O2,cse"

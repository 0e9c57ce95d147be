"""The run report: model summaries, JSON (atomic, JSON-safe) and the terminal tables."""

from __future__ import annotations

import io
import json
import os

import numpy as np
import onnx_ir as ir
import pytest
from rich.console import Console

from onnxpress.passes.fidelity import compare_outputs
from onnxpress.passes.manager import PassManager
from onnxpress.passes.registry import get_pass
from onnxpress.report import Report, summarize_model
from tests.util import model_from_text

MODEL = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[2,4] x) => (float[2,3] y)
<float[4,3] w = {0.1, -0.2, 0.3, 0.4, 0.5, -0.6, 0.7, 0.8, -0.9, 1.0, 1.1, 1.2}> {
    h = MatMul(x, w)
    i = Identity(h)
    y = Relu(i)
}
"""


@pytest.fixture
def model() -> ir.Model:
    return model_from_text(MODEL)


def make_report(model: ir.Model, tmp_path) -> Report:
    from onnxpress.ir.io import save

    src = str(tmp_path / "in.onnx")
    save(model, src)
    before = summarize_model(model, src)
    manager = PassManager([get_pass("eliminate-identity")(), get_pass("dce")()])
    manager(model)
    dst = str(tmp_path / "out.onnx")
    save(model, dst)
    reference = [{"y": np.array([[0.1, 0.9, 0.0], [0.7, 0.2, 0.1]], np.float32)}]
    candidate = [{"y": np.array([[0.1, 0.8, 0.0], [0.1, 0.2, 0.7]], np.float32)}]
    return Report(
        input_path=src,
        output_path=dst,
        pipeline=manager.to_text(),
        before=before,
        after=summarize_model(model, dst),
        passes=manager.records,
        fidelity=compare_outputs(reference, candidate) | compare_outputs({"same": np.ones(3)}, {"same": np.ones(3)}),
        verify="numeric",
        diagnostics=["something to note"],
        seconds=0.25,
        target="cpu",
        data="random feeds (seed 0) (1 sample(s))",
    )


def test_summarize_model(model, tmp_path):
    summary = summarize_model(model)
    assert summary == {
        "nodes": 3,
        "params": 12,
        "param_bytes": 48,
        "macs": 24,
        "macs_exact": True,
        "file_size": None,
    }
    from onnxpress.ir.io import save

    save(model, str(tmp_path / "m.onnx"))
    assert summarize_model(model, tmp_path / "m.onnx")["file_size"] == os.path.getsize(tmp_path / "m.onnx")


def test_to_dict_and_atomic_json(model, tmp_path):
    report = make_report(model, tmp_path)
    data = report.to_dict()
    assert data["before"]["nodes"] == 3 and data["after"]["nodes"] == 2
    assert [p["name"] for p in data["passes"]] == ["eliminate-identity", "dce"]
    assert data["passes"][0]["modified"] is True and data["passes"][1]["modified"] is False
    assert data["fidelity"]["y"]["top1_agreement"] == 0.5
    assert data["fidelity"]["same"]["sqnr_db"] == "inf"  # JSON has no infinity
    assert data["version"] and data["schema"] == 1
    assert (data["verify"], data["target"], data["seconds"]) == ("numeric", "cpu", 0.25)
    path = tmp_path / "report.json"
    path.write_text("old")
    report.to_json(path)
    assert json.loads(path.read_text()) == data
    assert [n for n in os.listdir(tmp_path) if n.startswith(".report-")] == []


def test_to_json_stringifies_unknown_values_and_a_failure_leaves_the_old_file(model, tmp_path):
    report = make_report(model, tmp_path)
    report.passes[0]["stats"]["odd"] = object()  # not JSON: becomes its str()
    report.passes[0]["stats"]["count"] = np.int64(3)  # numpy scalars become numbers
    report.to_json(tmp_path / "ok.json")
    stats = json.loads((tmp_path / "ok.json").read_text())["passes"][0]["stats"]
    assert stats["count"] == 3 and stats["odd"].startswith("<object")

    class Boom:
        def to_dict(self):
            raise RuntimeError("no")

    path = tmp_path / "r.json"
    path.write_text("previous")
    bad = Report(None, None, "", {}, {}, fidelity={"x": Boom()})  # type: ignore[dict-item]
    with pytest.raises(RuntimeError):
        bad.to_json(path)
    assert path.read_text() == "previous"
    assert [n for n in os.listdir(tmp_path) if n.startswith(".report-")] == []


def test_render_fits_100_columns(model, tmp_path):
    report = make_report(model, tmp_path)
    out = io.StringIO()
    report.render(Console(file=out, width=100, color_system=None))
    text = out.getvalue()
    assert max(len(line) for line in text.splitlines()) <= 100
    for needle in ("nodes", "params", "file size", "MACs", "0.667x", "eliminate-identity", "cosine", "50.0%", "something to note"):
        assert needle in text, needle
    assert "inf" in text  # SQNR of an identical output
    assert "verify: numeric" in text and "target: cpu" in text
    quiet = io.StringIO()
    report.render(Console(file=quiet, width=100, color_system=None), show_timing=False)
    assert " ms" not in quiet.getvalue() and "eliminate-identity" in quiet.getvalue()


def test_render_handles_missing_values_and_no_fidelity():
    report = Report(None, None, "dce", {"nodes": 0}, {"nodes": 0}, passes=[], fidelity=None)
    out = io.StringIO()
    report.render(Console(file=out, width=100, color_system=None))
    assert "(not saved)" in out.getvalue() and "fidelity" not in out.getvalue()
    assert report.seconds == 0.0


@pytest.mark.parametrize("partitioned", [False, True], ids=["per-node", "compiled-partitions"])
def test_render_placement_names_partitions_and_fallbacks(partitioned):
    placement = {"checked": True, "target_provider": "OpenVINOExecutionProvider",
                 "nodes": [{"name": "OpenVINO-EP-subgraph_1_0"}, {"name": "tail"}],
                 "by_provider": {"OpenVINOExecutionProvider": 1, "CPUExecutionProvider": 1},
                 "fallback": ["tail"]}
    if partitioned:
        placement.update(partitions=["OpenVINO-EP-subgraph_1_0"], absorbed=["conv", "relu", "pool"])
    report = Report(None, None, "dce", {"nodes": 0}, {"nodes": 0}, passes=[], fidelity=None, placement=placement)
    out = io.StringIO()
    report.render(Console(file=out, width=200, color_system=None))
    text = out.getvalue()
    if partitioned:
        assert "1 compiled OpenVINOExecutionProvider partition(s) holding 3 node(s)" in text
    else:
        assert "placement: 2 node(s) ran" in text
    assert "fell back from OpenVINOExecutionProvider: tail" in text

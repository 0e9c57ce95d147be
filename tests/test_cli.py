"""The `optimize` command end to end: outputs, summary, exit codes, and bad input."""

from __future__ import annotations

import hashlib
import json
import os
import shutil

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxpress.cli import main, optimize_main
from tests.util import assert_same_outputs, model_from_text

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")


def _digest(path) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


@pytest.fixture
def example(tmp_path):
    for name in ("tiny_resnet.onnx", "data.npz"):
        shutil.copy(os.path.join(EXAMPLES, name), tmp_path / name)
    return tmp_path


def test_example_end_to_end(example, capsys):
    model = example / "tiny_resnet.onnx"
    digest = _digest(model)
    report = example / "report.json"
    code = optimize_main([str(model), "--data", str(example / "data.npz"), "--report", str(report)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert _digest(model) == digest, "the input must not change"
    result = example / "tiny_resnet.opt.onnx"
    assert result.exists()
    data = json.loads(report.read_text())
    assert data["after"]["nodes"] < data["before"]["nodes"]
    assert data["verify"] == "numeric"
    fidelity = data["fidelity"]["logits"]
    assert fidelity["cosine"] > 0.99999 and fidelity["max_abs_error"] < 1e-4
    assert "logits" in out and "nodes" in out
    import onnx_ir as ir

    feeds = [{"input": x} for x in np.load(example / "data.npz")["input"][:3]]
    assert_same_outputs(ir.load(str(model)), ir.load(str(result)), feeds)
    # BatchNorm folded, Identity/Dropout gone, no temp files left behind
    ops = [n.op_type for n in onnx.load(str(result)).graph.node]
    assert "BatchNormalization" not in ops and "Identity" not in ops and "Dropout" not in ops
    assert sorted(os.listdir(example)) == ["data.npz", "report.json", "tiny_resnet.onnx", "tiny_resnet.opt.onnx"]


def test_custom_pass_plugin_from_file(example, capsys):
    model = example / "tiny_resnet.onnx"
    out_path = example / "out.onnx"
    code = optimize_main([
        str(model), "-o", str(out_path), "--load-plugin", os.path.join(EXAMPLES, "custom_pass.py"),
        "--pipeline", "O1,fold-conv-scale", "--verify", "numeric", "--report", str(example / "r.json"),
    ])
    assert code == 0, capsys.readouterr()
    records = json.loads((example / "r.json").read_text())["passes"]
    scale = [r for r in records if r["name"] == "fold-conv-scale"]
    assert scale and scale[0]["stats"]["folded"] == 1
    assert "Mul" not in [n.op_type for n in onnx.load(str(out_path)).graph.node]


def test_print_pipeline_and_list_passes(capsys):
    assert optimize_main(["--print-pipeline", "-O1"]) == 0
    assert "fold-constants" in capsys.readouterr().out
    assert optimize_main(["--print-pipeline", "--pipeline", "fixpoint{max-iters=2}(cse,dce)"]) == 0
    assert capsys.readouterr().out.strip() == "fixpoint{max-iters=2}(cse,dce)"
    assert main(["list-passes"]) == 0
    out = capsys.readouterr().out
    for name in ("fold-constants", "dce", "cse", "fixpoint", "O2"):
        assert name in out


def test_usage_errors_exit_2(example, capsys):
    assert optimize_main([]) == 2
    assert "model argument is required" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        optimize_main([str(example / "tiny_resnet.onnx"), "--verify", "bogus"])
    assert info.value.code == 2
    assert optimize_main([str(example / "tiny_resnet.onnx"), "--pipeline", "fold-constant"]) == 2
    err = capsys.readouterr().err
    assert "did you mean fold-constants" in err and "Traceback" not in err
    assert optimize_main([str(example / "tiny_resnet.onnx"), "--target", "cpux"]) == 2
    with pytest.raises(SystemExit) as info:
        optimize_main([str(example / "tiny_resnet.onnx"), "--threads", "0"])
    assert info.value.code == 2 and "expected a positive integer" in capsys.readouterr().err
    assert optimize_main([str(example / "tiny_resnet.onnx"), "-o", str(example / "tiny_resnet.onnx")]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err
    assert not (example / "tiny_resnet.opt.onnx").exists()


def test_failing_numeric_check_exits_1_and_names_the_pass(example, tmp_path, capsys):
    plugin = tmp_path / "wrong.py"
    plugin.write_text(
        "import numpy as np, onnx_ir as ir\n"
        "from onnxpress import Pass, PassResult, register_pass\n"
        "@register_pass\n"
        "class ScaleFirstWeight(Pass):\n"
        "    '''Deliberately wrong: scales the first Conv weight.'''\n"
        "    name = 'test-wrong-scale'\n"
        "    def run(self, model, am):\n"
        "        for v in model.graph.initializers.values():\n"
        "            if v.const_value is not None and len(v.shape) == 4:\n"
        "                v.const_value = ir.tensor(v.const_value.numpy() * 1.5)\n"
        "                return PassResult(model, True)\n"
        "        return PassResult(model, False)\n"
    )
    repro = tmp_path / "repro"
    code = optimize_main([
        str(example / "tiny_resnet.onnx"), "--load-plugin", str(plugin), "--pipeline", "O1,test-wrong-scale,dce",
        "--data", str(example / "data.npz"), "--reproducer", str(repro),
    ])
    err = capsys.readouterr().err
    assert code == 1
    assert "test-wrong-scale" in err and "Traceback" not in err
    assert not (example / "tiny_resnet.opt.onnx").exists()
    assert (repro / "pipeline.txt").read_text().strip() == "test-wrong-scale"
    assert (repro / "model.onnx").exists()


# ---------------------------------------------------------------------------------------------
# Bad input: one clear line, exit 2 (or correct handling), no output, input unchanged.
# ---------------------------------------------------------------------------------------------
def _external_model(tmp_path, location: str, write_data: bool = True) -> str:
    weight = np.arange(16, dtype=np.float32).reshape(4, 4)
    tensor = numpy_helper.from_array(weight, "w")
    tensor.data_location = TensorProto.EXTERNAL
    tensor.ClearField("raw_data")
    for key, value in (("location", location), ("offset", "0"), ("length", str(weight.nbytes))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], [tensor],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "model.onnx"
    path.write_bytes(model.SerializeToString())
    if write_data:
        (tmp_path / "weights.bin").write_bytes(weight.tobytes())
    return str(path)


def _bad_inputs(tmp_path):
    good = os.path.join(EXAMPLES, "tiny_resnet.onnx")
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(open(good, "rb").read()[:5000])
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"this is not an onnx model at all \x00\xff" * 10)
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    cases = {
        "truncated": (str(truncated), "truncated.onnx"),
        "garbage": (str(garbage), "garbage.onnx"),
        "empty": (str(empty), "empty.onnx"),
        "missing": (str(tmp_path / "nope.onnx"), "nope.onnx"),
    }
    (tmp_path / "missing_data").mkdir()
    cases["missing external data"] = (_external_model(tmp_path / "missing_data", "weights.bin", write_data=False), "weights.bin")
    (tmp_path / "dotdot").mkdir()
    cases["external data with .."] = (_external_model(tmp_path / "dotdot", "../weights.bin"), "..")
    (tmp_path / "absolute").mkdir()
    cases["absolute external data"] = (_external_model(tmp_path / "absolute", "/etc/passwd"), "/etc/passwd")
    return cases


def test_bad_inputs_exit_2_with_one_line(tmp_path, capsys):
    for label, (path, mention) in _bad_inputs(tmp_path).items():
        before = _digest(path) if os.path.exists(path) else None
        files_before = sorted(os.listdir(os.path.dirname(path)))
        code = optimize_main([path])
        err = capsys.readouterr().err.strip()
        assert code == 2, f"{label}: exit {code}: {err}"
        assert "Traceback" not in err and len(err.splitlines()) == 1, f"{label}: {err}"
        assert mention in err, f"{label}: {err}"
        assert sorted(os.listdir(os.path.dirname(path))) == files_before, f"{label}: wrote something"
        if before is not None:
            assert _digest(path) == before


CUSTOM_DOMAIN = """
<ir_version: 8, opset_import: ["" : 17, "com.example" : 1]>
g (float[2,4] x) => (float[2,4] y) {
    a = Identity(x)
    b = com.example.Frobnicate(a)
    y = Relu(b)
}
"""

SUBGRAPHS = """
<ir_version: 8, opset_import: ["" : 17]>
g (bool c, float[4] x) => (float[4] y, float[4] z) {
    k = Constant<value = float[4] {1.0, 2.0, 3.0, 4.0}>()
    y = If(c) <
        then_branch = t () => (float[4] o) { i = Identity(x)
                                             o = Add(i, k) },
        else_branch = e () => (float[4] o) { o = Mul(x, k) }
    >
    n = Constant<value = int64 {3}>()
    cond = Constant<value = bool {1}>()
    z = Loop(n, cond, x) <
        body = b (int64 i, bool ci, float[4] acc) => (bool co, float[4] out) {
            co = Identity(ci)
            out = Add(acc, k)
        }
    >
}
"""

FUNCTION = """
<ir_version: 8, opset_import: ["" : 17, "local" : 1]>
g (float[4] x) => (float[4] y) {
    a = Identity(x)
    y = local.Swish(a)
}
<domain: "local", opset_import: ["" : 17]>
Swish (X) => (Y) {
    S = Sigmoid(X)
    Y = Mul(X, S)
}
"""


def test_unknown_domain_passes_through(tmp_path, capsys):
    path = tmp_path / "custom.onnx"
    onnx.save(onnx.parser.parse_model(CUSTOM_DOMAIN), str(path))
    code = optimize_main([str(path)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    out = onnx.load(str(tmp_path / "custom.opt.onnx"))
    assert [n.op_type for n in out.graph.node] == ["Frobnicate", "Relu"]
    assert [n.domain for n in out.graph.node] == ["com.example", ""]
    # asking for a numeric check on a model ORT cannot run is a clear input error
    code = optimize_main([str(path), "-o", str(tmp_path / "o2.onnx"), "--verify", "numeric"])
    err = capsys.readouterr().err
    assert code == 2 and "Frobnicate" in err and "Traceback" not in err
    assert not (tmp_path / "o2.onnx").exists()


@pytest.mark.parametrize("text", [SUBGRAPHS, FUNCTION], ids=["if-loop", "local-function"])
def test_subgraphs_and_functions_are_handled(tmp_path, capsys, text):
    path = tmp_path / "m.onnx"
    proto = onnx.parser.parse_model(text)
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))
    code = optimize_main([str(path), "--verify", "numeric", "--report", str(tmp_path / "r.json")])
    assert code == 0, capsys.readouterr().err
    report = json.loads((tmp_path / "r.json").read_text())
    for fid in report["fidelity"].values():
        assert fid["max_abs_error"] <= 1e-6
    onnx.checker.check_model(onnx.load(str(tmp_path / "m.opt.onnx")), full_check=True)


def test_prune_shorthand_on_the_example(example, capsys):
    report = example / "r.json"
    code = optimize_main([str(example / "tiny_resnet.onnx"), "--prune", "0.25", "--report", str(report),
                          "--input-shape", "input:1x3x32x32", "--verify", "numeric"])
    assert code == 0, capsys.readouterr().err
    data = json.loads(report.read_text())
    assert "prune-channels{ratio=0.25 round-to=8}" in data["pipeline"]
    assert data["after"]["params"] < 0.8 * data["before"]["params"]
    assert data["after"]["macs"] < 0.8 * data["before"]["macs"]
    prune = [p for p in data["passes"] if p["name"] == "prune-channels"][0]
    assert prune["stats"]["channels_removed"] > 0
    onnx.checker.check_model(onnx.load(str(example / "tiny_resnet.opt.onnx")), full_check=True)
    assert optimize_main([str(example / "tiny_resnet.onnx"), "--prune", "1.5"]) == 2


def test_lowrank_shorthand_on_the_example(example, capsys):
    report = example / "r.json"
    code = optimize_main([str(example / "tiny_resnet.onnx"), "--lowrank", "0.5", "--report", str(report),
                          "--data", str(example / "data.npz")])
    assert code == 0, capsys.readouterr().err
    data = json.loads(report.read_text())
    # align=8 is the default; with --data the chains are refitted
    assert "lowrank-tucker{rank-ratio=0.5 refit=true}" in data["pipeline"]
    assert data["after"]["params"] < data["before"]["params"]
    tucker = [p for p in data["passes"] if p["name"] == "lowrank-tucker"][0]
    assert tucker["modified"] and tucker["stats"]["refits"]
    onnx.checker.check_model(onnx.load(str(example / "tiny_resnet.opt.onnx")), full_check=True)
    assert optimize_main([str(example / "tiny_resnet.onnx"), "--lowrank", "0"]) == 2


def test_quantize_int8_with_and_without_data(example, capsys):
    report = example / "r.json"
    code = optimize_main([str(example / "tiny_resnet.onnx"), "--quantize", "int8", "--data",
                          str(example / "data.npz"), "--report", str(report), "--threads", "1"])
    assert code == 0, capsys.readouterr().err
    data = json.loads(report.read_text())
    assert data["pipeline"].endswith("quantize-qdq")
    stats = next(p["stats"] for p in data["passes"] if p["name"] == "quantize-qdq")
    assert stats["part_timing"]["threads"] == 1 and stats["speed"]["threads"] == 1  # timed as deployed
    assert data["after"]["param_bytes"] < 0.35 * data["before"]["param_bytes"]
    assert data["fidelity"]["logits"]["cosine"] > 0.99
    assert not any(d.startswith("WARNING") for d in data["diagnostics"])
    ops = {n.op_type for n in onnx.load(str(example / "tiny_resnet.opt.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    # without data: random calibration, and the summary says so loudly
    code = optimize_main([str(example / "tiny_resnet.onnx"), "--quantize", "int8", "-o", str(example / "q.onnx"),
                          "--report", str(report)])
    out = capsys.readouterr().out
    assert code == 0
    assert any("RANDOM" in d for d in json.loads(report.read_text())["diagnostics"])
    assert "RANDOM" in out

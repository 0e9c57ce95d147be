"""Instruments around passes, and the fidelity numbers the numeric check is built on."""

from __future__ import annotations

import io
import math
import os
from typing import Any

import numpy as np
import onnx_ir as ir
import pytest

from onnxpress.backends.ort import OrtRunner
from onnxpress.errors import PassFailure, VerificationError
from onnxpress.passes.base import Pass, PassResult, Tolerance
from onnxpress.passes.fidelity import compare_outputs, within_tolerance
from onnxpress.passes.instruments import (
    BisectInstrument,
    DumpIRInstrument,
    NumericCheckInstrument,
    PrintIRInstrument,
    ReproducerInstrument,
    StatisticsInstrument,
    TimingInstrument,
    VerifyEachInstrument,
    count_nodes,
)
from onnxpress.passes.manager import PassManager
from onnxpress.passes.registry import get_pass, register_pass
from tests.util import model_from_text, random_feeds

MODEL = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[2,4] x) => (float[2,3] y)
<float[4,3] w = {0.1, -0.2, 0.3, 0.4, 0.5, -0.6, 0.7, 0.8, -0.9, 1.0, 1.1, 1.2}> {
    h = MatMul(x, w)
    i = Identity(h)
    y = Relu(i)
}
"""


# -- test passes -----------------------------------------------------------------------------------
@register_pass
class ScaleWeightPass(Pass):
    """Deliberately wrong: multiplies every initializer by 1.1."""

    name = "test-instr-scale-weight"

    def run(self, model: ir.Model, am: Any) -> PassResult:
        for value in model.graph.initializers.values():
            value.const_value = ir.tensor(value.const_value.numpy() * np.float32(1.1))
        return PassResult(model, True)


@register_pass
class ReluToSigmoidPass(Pass):
    """Deliberately wrong: turns Relu into Sigmoid."""

    name = "test-instr-relu-to-sigmoid"

    def run(self, model: ir.Model, am: Any) -> PassResult:
        for node in model.graph:
            if node.op_type == "Relu":
                node.op_type = "Sigmoid"
        return PassResult(model, True)


@register_pass
class BreakStructurePass(Pass):
    """Deliberately wrong: removes the node that produces the graph output."""

    name = "test-instr-break-structure"

    def run(self, model: ir.Model, am: Any) -> PassResult:
        producer = model.graph.outputs[0].producer()
        model.graph.remove(producer, safe=False)
        return PassResult(model, True)


@register_pass
class CrashPass(Pass):
    name = "test-instr-crash"

    def run(self, model: ir.Model, am: Any) -> PassResult:
        raise RuntimeError("boom")


class ForeignScalePass(ir.passes.InPlacePass):
    """An onnx_ir pass (no onnxpress tolerance): scales the weights, so LOSSLESS must catch it."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        return ScaleWeightPass()(model)


def identity_elim() -> Pass:
    return get_pass("eliminate-identity")()


class CountingRunner:
    def __init__(self) -> None:
        self.inner = OrtRunner(optimization_level="disable")
        self.calls = 0

    def run(self, model: ir.Model, feeds: Any) -> list[dict[str, np.ndarray]]:
        self.calls += 1
        return self.inner.run(model, feeds)


@pytest.fixture
def model() -> ir.Model:
    return model_from_text(MODEL)


@pytest.fixture
def feeds(model) -> list[dict]:
    return random_feeds(model, n=3)


def numeric(feeds, runner=None, **kwargs) -> NumericCheckInstrument:
    return NumericCheckInstrument(runner or CountingRunner(), feeds, **kwargs)


# -- fidelity numbers ------------------------------------------------------------------------------
def test_compare_outputs_numbers_on_hand_made_arrays():
    ref = [{"y": np.array([1.0, 2.0, 3.0, 4.0], np.float32)}]
    got = [{"y": np.array([1.0, 2.0, 3.0, 5.0], np.float32)}]
    fid = compare_outputs(ref, got)["y"]
    assert fid.max_abs_error == pytest.approx(1.0)
    assert fid.mean_abs_error == pytest.approx(0.25)
    assert fid.cosine == pytest.approx(34 / (math.sqrt(30) * math.sqrt(39)))
    assert fid.sqnr_db == pytest.approx(10 * math.log10(30.0))
    assert fid.top1_agreement == 1.0  # a 1-D float output with 4 entries reads as class scores
    assert fid.exact_match is None and fid.note == ""


def test_compare_outputs_aggregates_over_samples_and_top1():
    ref = [{"p": np.array([[0.1, 0.9], [0.8, 0.2]])}, {"p": np.array([[0.5, 0.4], [0.0, 1.0]])}]
    got = [{"p": np.array([[0.2, 0.7], [0.3, 0.6]])}, {"p": np.array([[0.5, 0.4], [0.0, 1.0]])}]
    fid = compare_outputs(ref, got)["p"]
    assert fid.top1_agreement == pytest.approx(0.75)  # 3 of 4 rows keep their argmax
    assert fid.max_abs_error == pytest.approx(0.5)
    assert fid.mean_abs_error == pytest.approx((0.1 + 0.2 + 0.5 + 0.4) / 8)


def test_compare_outputs_identical_zero_int_and_scalar():
    same = compare_outputs({"a": np.ones((2, 3))}, {"a": np.ones((2, 3))})["a"]
    assert same.max_abs_error == 0 and same.cosine == 1.0 and same.sqnr_db == math.inf
    zeros = compare_outputs({"z": np.zeros(3)}, {"z": np.zeros(3)})["z"]
    assert zeros.cosine == 1.0
    ints = compare_outputs({"i": np.array([1, 2, 3, 4])}, {"i": np.array([1, 2, 0, 4])})["i"]
    assert ints.exact_match == pytest.approx(0.75) and ints.top1_agreement is None
    assert ints.max_abs_error == 3.0
    scalar = compare_outputs({"s": np.float32(2.0)}, {"s": np.float32(2.5)})["s"]
    assert scalar.max_abs_error == pytest.approx(0.5) and scalar.top1_agreement is None


def test_compare_outputs_non_finite_values():
    both_nan = compare_outputs({"a": np.array([np.nan, 1.0, np.inf])}, {"a": np.array([np.nan, 1.0, np.inf])})["a"]
    assert both_nan.max_abs_error == 0.0 and both_nan.note == "" and both_nan.cosine == 1.0
    one_nan = compare_outputs({"a": np.array([np.nan, 1.0])}, {"a": np.array([0.0, 1.0])})["a"]
    assert one_nan.max_abs_error == math.inf and "1 non-finite" in one_nan.note
    ok, worst = within_tolerance({"a": np.array([np.nan, 1.0])}, {"a": np.array([0.0, 1.0])}, Tolerance())
    assert not ok and "non-finite" in worst


def test_compare_outputs_shape_change_and_missing_output():
    out = compare_outputs({"a": np.ones((2, 3)), "b": np.ones(2)}, {"a": np.ones((3, 2))})
    assert out["a"].note == "shape 2x3 became 3x2" and out["a"].max_abs_error == math.inf
    assert out["b"].note == "missing in the candidate"
    with pytest.raises(ValueError, match="2 reference samples but 1"):
        compare_outputs([{"a": 1}, {"a": 1}], [{"a": 1}])


def test_within_tolerance_names_the_worst_output():
    ref = {"a": np.array([1.0, 2.0]), "b": np.array([1.0, 2.0])}
    got = {"a": np.array([1.0, 2.001]), "b": np.array([1.3, 2.0])}
    ok, worst = within_tolerance(ref, got, Tolerance(rtol=1e-4, atol=1e-5))
    assert not ok and worst == "output 'b' max abs error 0.3 > tol (rtol=0.0001, atol=1e-05)"
    ok, worst = within_tolerance(ref, got, Tolerance(rtol=0.5, atol=0.0))
    assert ok and "output 'b'" in worst and "within tol" in worst
    # lossy passes: cosine decides
    ok, worst = within_tolerance(ref, got, Tolerance(rtol=0, atol=0, min_cosine=0.99))
    assert ok and "cosine" in worst
    ok, worst = within_tolerance(ref, got, Tolerance(rtol=0, atol=0, min_cosine=0.9999999))
    assert not ok and worst.startswith("output 'b' cosine")


# -- timing and statistics -------------------------------------------------------------------------
def test_timing_and_statistics(model):
    timing, stats = TimingInstrument(), StatisticsInstrument()
    PassManager([identity_elim(), identity_elim()], instruments=[timing, stats])(model)
    assert [name for name, _ in timing.timings] == ["eliminate-identity", "eliminate-identity"]
    assert timing.total >= sum(s for _, s in timing.timings) >= 0
    assert timing.by_pass().keys() == {"eliminate-identity"}
    first, second = stats.entries
    assert (first.modified, first.nodes_before, first.nodes_after) == (True, 3, 2)
    assert (second.modified, second.nodes_before, second.nodes_after) == (False, 2, 2)
    assert count_nodes(model) == 2


# -- verify-each -----------------------------------------------------------------------------------
def test_verify_each_names_the_pass_that_breaks_structure(model):
    verify = VerifyEachInstrument()
    with pytest.raises(VerificationError, match=r"after pass 'test-instr-break-structure' \(passes before: eliminate-identity\)") as info:
        PassManager([identity_elim(), BreakStructurePass()], instruments=[verify])(model)
    assert info.value.pass_name == "test-instr-break-structure" and info.value.details["problems"]


def test_verify_each_passes_correct_pipeline_and_ignores_problems_already_in_the_input(model):
    PassManager([identity_elim()], instruments=[VerifyEachInstrument()])(model)
    calls = []

    def verifier(m: ir.Model) -> list[str]:
        calls.append(1)
        return ["old problem"]  # present in the input: never blamed on a pass

    PassManager([identity_elim(), identity_elim()], instruments=[VerifyEachInstrument(verifier)])(model)
    assert len(calls) == 3


# -- numeric check ---------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [ScaleWeightPass, ReluToSigmoidPass])
def test_numeric_check_names_a_wrong_pass(model, feeds, bad):
    check = numeric(feeds)
    with pytest.raises(VerificationError) as info:
        PassManager([identity_elim(), bad()], instruments=[check])(model)
    message = str(info.value)
    assert message.startswith(f"numeric check failed after pass '{bad.name}' (passes before: eliminate-identity): output 'y' max abs error")
    assert "> tol (rtol=0.0001, atol=1e-05, scale_rtol=0.0001)" in message
    assert info.value.pass_name == bad.name


def test_numeric_check_is_quiet_for_correct_passes_and_runs_each_state_once(model, feeds):
    check = numeric(feeds)
    unchanged = identity_elim()
    PassManager([identity_elim(), unchanged, get_pass("dce")()], instruments=[check])(model)
    # before the first pass + after it; the second reports modified=False; dce changes nothing here
    assert check.runner.calls == 2
    assert [c.pass_name for c in check.checks] == ["eliminate-identity"] and check.checks[0].ok


def test_numeric_check_reuses_the_last_outputs_as_the_next_reference(model, feeds):
    check = numeric(feeds, tolerances={"test-instr-scale-weight": Tolerance(rtol=0.2, atol=0.0)})
    PassManager([identity_elim(), ScaleWeightPass(), ScaleWeightPass()], instruments=[check])(model)
    assert check.runner.calls == 4  # one reference run, then one run per modifying pass
    assert all(c.ok for c in check.checks)


def test_numeric_check_uses_lossless_for_foreign_passes(model, feeds):
    with pytest.raises(VerificationError, match="after pass 'ForeignScalePass' \\(no passes before\\)"):
        PassManager([ForeignScalePass()], instruments=[numeric(feeds)])(model)


def test_numeric_check_accepts_a_feed_source(model):
    from onnxpress.data import load_data

    check = numeric(load_data(None, model, num_random=20), max_samples=5)
    assert len(check.feeds) == 5


# -- printing and dumping --------------------------------------------------------------------------
def test_print_ir_only_after_changes(model):
    stream = io.StringIO()
    texts: list[str] = []
    PassManager(
        [identity_elim(), identity_elim()],
        instruments=[PrintIRInstrument(stream), PrintIRInstrument(texts.append, only_changed=False)],
    )(model)
    assert stream.getvalue().count("IR after eliminate-identity") == 1
    assert "MatMul" in stream.getvalue() and "Identity(" not in stream.getvalue().split("IR after")[1]
    assert len(texts) == 2


def test_dump_ir_writes_numbered_files_for_changes(model, tmp_path):
    dump = DumpIRInstrument(tmp_path / "dumps")
    PassManager([identity_elim(), identity_elim(), ScaleWeightPass()], instruments=[dump])(model)
    assert sorted(os.listdir(tmp_path / "dumps")) == [
        "00-input.onnx",
        "01-eliminate-identity.onnx",
        "03-test-instr-scale-weight.onnx",
    ]
    reloaded = ir.load(str(tmp_path / "dumps" / "01-eliminate-identity.onnx"))
    assert [n.op_type for n in reloaded.graph] == ["MatMul", "Relu"]


# -- reproducer ------------------------------------------------------------------------------------
def _reproduce(folder, instruments) -> None:
    from onnxpress.ir.io import load

    text = (folder / "pipeline.txt").read_text().strip()
    PassManager.from_pipeline(text, instruments=instruments)(load(str(folder / "model.onnx")))


def test_reproducer_for_a_numeric_failure_reproduces_it(model, feeds, tmp_path):
    repro, timing = ReproducerInstrument(tmp_path / "repro"), TimingInstrument()
    # the reproducer is listed first: it must still learn about the numeric check's failure
    with pytest.raises(VerificationError) as original:
        PassManager([identity_elim(), ScaleWeightPass()], instruments=[repro, timing, numeric(feeds)])(model)
    assert [name for name, _ in timing.timings] == ["eliminate-identity", "test-instr-scale-weight"]  # not twice
    folder = tmp_path / "repro"
    assert sorted(os.listdir(folder)) == ["README.txt", "model.onnx", "pipeline.txt"]
    assert (folder / "pipeline.txt").read_text() == "test-instr-scale-weight\n"
    readme = (folder / "README.txt").read_text()
    assert "Pass 'test-instr-scale-weight' failed (after eliminate-identity)" in readme
    assert 'optimize model.onnx --pipeline "$(cat pipeline.txt)"' in readme
    with pytest.raises(VerificationError) as again:
        _reproduce(folder, [numeric(feeds)])
    assert again.value.pass_name == original.value.pass_name == "test-instr-scale-weight"
    assert "no passes before" in str(again.value)


def test_reproducer_for_a_crash_and_a_structure_failure(model, tmp_path):
    with pytest.raises(PassFailure, match="pass 'test-instr-crash' failed"):
        PassManager([identity_elim(), CrashPass()], instruments=[ReproducerInstrument(tmp_path / "crash")])(model)
    with pytest.raises(PassFailure, match="RuntimeError: boom"):
        _reproduce(tmp_path / "crash", [])

    fresh = model_from_text(MODEL)
    repro = ReproducerInstrument(tmp_path / "structure")
    with pytest.raises(VerificationError):
        PassManager([BreakStructurePass()], instruments=[VerifyEachInstrument(), repro])(fresh)
    assert (tmp_path / "structure" / "model.onnx").exists()
    with pytest.raises(VerificationError, match="test-instr-break-structure"):
        _reproduce(tmp_path / "structure", [VerifyEachInstrument()])


def test_reproducer_writes_nothing_when_all_is_well(model, tmp_path):
    PassManager([identity_elim()], instruments=[ReproducerInstrument(tmp_path / "r")])(model)
    assert not (tmp_path / "r").exists()


# -- bisect ----------------------------------------------------------------------------------------
def test_bisect_skips_pass_executions_at_and_after_the_limit(model, feeds):
    bisect = BisectInstrument(1)
    manager = PassManager([identity_elim(), ScaleWeightPass(), CrashPass()], instruments=[bisect])
    manager(model)  # the crash is never reached
    assert [(r.name, r.skipped) for r in manager.records] == [
        ("eliminate-identity", False),
        ("test-instr-scale-weight", True),
        ("test-instr-crash", True),
    ]
    assert bisect.ran == [(0, "eliminate-identity")]
    assert [i for i, _ in bisect.skipped] == [1, 2]
    w = model.graph.initializers["w"].const_value.numpy()
    np.testing.assert_array_equal(w, model_from_text(MODEL).graph.initializers["w"].const_value.numpy())


def test_bisect_counts_passes_inside_adaptors(model):
    bisect = BisectInstrument(2)
    manager = PassManager.from_pipeline("fixpoint{max-iters=3}(eliminate-identity,dce)", instruments=[bisect])
    manager(model)
    assert [name for _, name in bisect.ran] == ["eliminate-identity", "dce"]
    assert bisect.skipped and bisect.skipped[0] == (2, "eliminate-identity")


def test_lossless_tolerance_allows_rounding_relative_to_the_output_scale():
    # a sigmoid map: an error of 6.6e-5 near 0.5 is float rounding through a deep network (PP-OCRv4
    # det after fold-batchnorm) and passes; the same error on an output of scale 1e-3 does not
    from onnxpress.passes.base import LOSSLESS

    ref = {"p": np.array([0.0, 0.5, 1.0])}
    assert within_tolerance(ref, {"p": np.array([0.0, 0.5 + 6.6e-5, 1.0])}, LOSSLESS)[0]
    assert not within_tolerance(ref, {"p": np.array([0.0, 0.5 + 6.6e-5, 1.0])}, Tolerance(rtol=1e-4, atol=1e-5))[0]
    small = {"p": np.array([0.0, 5e-4, 1e-3])}
    assert not within_tolerance(small, {"p": np.array([0.0, 5e-4 + 6.6e-5, 1e-3])}, LOSSLESS)[0]

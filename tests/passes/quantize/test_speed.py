"""The measured speed checks of quantize-qdq: the whole model (`if-slower=warn|keep-float|ignore`) and
per part (`part-timing`: ORT's kernel profile, then timed trials)."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

from onnxpress.backends.ort import OrtRunner
from onnxpress.passes.quantize import qdq as qdq_module
from onnxpress.passes.quantize import speed as sp
from onnxpress.passes.quantize.speed import compare_latency
from tests.passes.quantize.test_qdq import conv_relu_model, quantize
from tests.util import random_feeds


def _count(model, op_type: str) -> int:
    return sum(node.op_type == op_type for node in model.graph)


def test_compare_latency_times_both_models_interleaved():
    model = conv_relu_model()
    feed = random_feeds(model, 1)[0]
    result = compare_latency(OrtRunner(intra_op_threads=1), model, model.clone(), feed, budget_s=0.2)
    assert result["rounds"] >= 5 and result["threads"] == 1
    assert result["float_ms"] > 0 and result["quantized_ms"] > 0
    assert result["ratio"] == pytest.approx(result["quantized_ms"] / result["float_ms"], rel=0.02)  # ms rounded


def _timed(ratio: float):
    def fake(runner, reference, candidate, feed, **kwargs):
        assert _count(reference, "QuantizeLinear") == 0 and _count(candidate, "QuantizeLinear") > 0
        return {"float_ms": 1.0, "quantized_ms": ratio, "ratio": ratio, "rounds": 5, "threads": 1}
    return fake


@pytest.mark.parametrize(
    ("mode", "ratio", "quantized", "warned"),
    [("warn", 1.5, True, True), ("keep-float", 1.5, False, True), ("keep-float", 0.6, True, False),
     ("warn", 0.6, True, False)],
)
def test_a_slower_quantized_model_is_reported_or_kept_float(monkeypatch, mode, ratio, quantized, warned):
    monkeypatch.setattr(qdq_module, "compare_latency", _timed(ratio))
    model = conv_relu_model()
    result, ctx, _ = quantize(model, calibration="minmax", if_slower=mode)
    assert result.stats["speed"]["ratio"] == ratio
    assert (_count(model, "QuantizeLinear") > 0) is quantized
    assert result.stats.get("kept_float_model", False) is (not quantized)
    assert any("do not pay here" in d for d in ctx.diagnostics) is warned


def test_ignore_skips_the_timing(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("timed although if-slower=ignore")
    monkeypatch.setattr(qdq_module, "compare_latency", fail)
    model = conv_relu_model()
    result, _, _ = quantize(model, calibration="minmax", if_slower="ignore")
    assert "speed" not in result.stats and _count(model, "QuantizeLinear") > 0


def test_a_failing_timing_is_reported_not_fatal(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no clock")
    monkeypatch.setattr(qdq_module, "compare_latency", broken)
    model = conv_relu_model()
    result, _, _ = quantize(model, calibration="minmax")
    assert result.stats["speed"]["skipped"].startswith("timing failed: no clock")
    assert _count(model, "QuantizeLinear") > 0


def test_models_over_the_timing_size_are_not_timed(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("timed or profiled a model over TIMING_MAX_BYTES")
    monkeypatch.setattr(qdq_module, "compare_latency", fail)
    monkeypatch.setattr(sp, "kernel_times", fail)
    monkeypatch.setattr(qdq_module, "TIMING_MAX_BYTES", 0)
    model = conv_relu_model()
    result, _, _ = quantize(model, calibration="minmax", fallback="auto", target_sqnr=99.0, part_timing=True)
    assert result.stats["speed"]["skipped"].startswith("weights over")
    assert result.stats["part_timing"]["skipped"].startswith("weights over")
    assert "slowdown" not in result.stats["fallback"] and _count(model, "QuantizeLinear") > 0


# -- per part: ORT's kernel profile attributed to nodes, then timed trials ----------------------
def _pool_model():
    """Conv -> Relu -> MaxPool -> Conv: the pool is data movement that shares the Relu's scale."""
    from tests.passes.quantize.test_qdq import _seeded, make

    rand = _seeded(3)
    return make(
        "c1 = Conv <pads=[1,1,1,1]> (x, w1, b1)\n r1 = Relu (c1)\n"
        " p = MaxPool <kernel_shape=[2,2], strides=[2,2]> (r1)\n y = Conv <pads=[1,1,1,1]> (p, w2, b2)",
        "(float[1,4,16,16] x) => (float y)",
        {"w1": rand(8, 4, 3, 3, scale=0.3), "b1": rand(8, scale=0.1), "w2": rand(8, 8, 3, 3, scale=0.3),
         "b2": rand(8, scale=0.1)},
    )


def test_the_kernel_profile_is_attributed_to_the_models_nodes():
    import onnx_ir.passes.common

    model = _pool_model()
    onnx_ir.passes.common.NameFixPass()(model)
    runner = OrtRunner(intra_op_threads=1)
    feed = random_feeds(model, 1)[0]
    kernels = sp.kernel_times(runner, model, feed, runs=5, warmup=1)
    assert kernels and all(k.us >= 0 for k in kernels.values())
    assert not any(k.integer for k in kernels.values()) and not sp.integer_nodes(kernels, model)
    float_us, _ = sp.node_times(kernels, model)
    conv1, conv2 = (n for n in model.graph if n.op_type == "Conv")
    relu = next(n for n in model.graph if n.op_type == "Relu")
    # ORT fuses Conv + Relu (an NCHWc conv named after the Relu's output): the time is the conv's
    assert conv1 in float_us and conv2 in float_us and relu not in float_us
    quantized = model.clone()
    quantize(quantized, calibration="minmax")
    assert _count(quantized, "QuantizeLinear") > 0
    quantized_kernels = sp.kernel_times(runner, quantized, feed, runs=5, warmup=1)
    quantized_us, unclaimed = sp.node_times(quantized_kernels, model)
    # QLinearConv keeps the conv's name (ORT's layout transform appends `_token_N`); Q / DQ nobody's
    assert conv1 in quantized_us and conv2 in quantized_us and unclaimed > 0
    # what runs in integers: both convs and the pool (uint8 MaxPool, sharing the Relu's scale)
    pool = next(n for n in model.graph if n.op_type == "MaxPool")
    assert sp.integer_nodes(quantized_kernels, model) == {conv1, conv2, pool}


def test_slower_parts_group_by_kind_and_skip_what_a_trial_cannot_see():
    model = _pool_model()
    conv1, pool, conv2 = (n for n in model.graph if n.op_type in ("Conv", "MaxPool"))
    conv2.attributes["group"] = ir.AttrInt64("group", 2)
    float_us = {conv1: 100.0, pool: 10.0, conv2: 40.0}
    quantized_us = {conv1: 60.0, pool: 90.0, conv2: 100.0}
    parts = sp.slower_parts(float_us, quantized_us, [conv1, pool, conv2], total_us=300.0)
    assert [(p.part, p.nodes, p.saving_us) for p in parts] == [("MaxPool", [pool], 80.0),
                                                             ("Conv (grouped)", [conv2], 60.0)]
    # a saving under MIN_SHARE of the run, or a node not clearly slower, is no part
    assert [p.part for p in sp.slower_parts(float_us, quantized_us, [conv1, pool, conv2], total_us=7000.0)] == ["MaxPool"]
    assert sp.slower_parts(float_us, {conv1: 60.0, pool: 12.0, conv2: 45.0}, [conv1, pool, conv2], 300.0) == []


def test_choose_float_parts_keeps_only_measured_gains(monkeypatch):
    model = _pool_model()
    conv1, pool, conv2 = (n for n in model.graph if n.op_type in ("Conv", "MaxPool"))
    parts = [sp.SlowerPart("MaxPool", [pool], 10.0, 90.0), sp.SlowerPart("Conv", [conv2], 40.0, 100.0),
             sp.SlowerPart("Conv (grouped)", [conv1], 40.0, 80.0)]
    built: list[dict] = []

    def build(keep):
        built.append(dict(keep))
        clone = model.clone()
        clone.doc_string = ",".join(sorted(n.op_type + str(i) for i, n in enumerate(model.graph) if n in keep))
        return clone

    # keeping the pool float is faster and as faithful; conv2 float is slower; conv1 float loses 3 dB
    def timer(current, trial):
        return 0.9 if trial.doc_string.count("MaxPool") and "Conv3" not in trial.doc_string \
            and "Conv0" not in trial.doc_string else 1.1 if "Conv3" in trial.doc_string else 0.8

    def fidelity(clone):
        return 27.0 if "Conv0" in clone.doc_string else 30.0

    chosen, records = sp.choose_float_parts(parts, {}, build, timer, fidelity)
    assert chosen == {pool: sp.SLOWER}
    assert [r["kept_float"] for r in records] == [True, False, False]
    assert records[1]["ratio"] == 1.1 and records[2]["sqnr_db"] == 27.0
    assert built[0] == {} and built[2] == {pool: sp.SLOWER, conv2: sp.SLOWER}
    # a part the runtime fuses back into its integer kernel is not timed; a gain under min_gain is no gain
    def never_timed(current, trial):
        raise AssertionError("timed a part that does not run in float")
    chosen, records = sp.choose_float_parts(parts[:1], {}, build, never_timed, fidelity,
                                            runs_float=lambda trial, nodes: False)
    assert chosen == {} and records == [{"part": "MaxPool", "nodes": 1, "kept_float": False, "fused_back": True}]
    chosen, records = sp.choose_float_parts(parts[:1], {}, build, lambda a, b: 0.99, fidelity)
    assert chosen == {} and records[0]["ratio"] == 0.99
    # a gain must show in a second timing too (one timing is good to a few %)
    timings = iter([0.9, 1.0])
    chosen, records = sp.choose_float_parts(parts[:1], {}, build, lambda a, b: next(timings), fidelity)
    assert chosen == {} and records[0]["ratio"] == 1.0
    # fused back alone, but float with the nodes that keep its input tensor float too: the wider part is tried
    chosen, records = sp.choose_float_parts(parts[:1], {}, build, lambda a, b: 0.9, fidelity,
                                            runs_float=lambda trial, nodes: "Conv0" in trial.doc_string,
                                            widen=lambda nodes: [conv1])
    assert chosen == {} and records[0]["widened"] == 1 and records[0]["sqnr_db"] == 27.0  # measured, too lossy
    chosen, records = sp.choose_float_parts(parts[:1], {}, build, lambda a, b: 0.9, lambda m: 30.0,
                                            runs_float=lambda trial, nodes: "Conv0" in trial.doc_string,
                                            widen=lambda nodes: [conv1])
    assert chosen == {pool: sp.SLOWER, conv1: sp.SLOWER} and records[0]["kept_float"]
    # a part whose float weights would grow the model beyond max_growth is not even timed
    monkeypatch.setattr(sp, "weight_bytes", lambda m: 200 if "Conv" in m.doc_string else 100)
    chosen, records = sp.choose_float_parts(parts[1:], {}, build, timer, fidelity, max_growth=0.5)
    assert chosen == {} and [r.get("too_big") for r in records] == [2.0, 2.0]


def test_part_timing_keeps_a_slower_pool_float_and_the_model_stays_close(monkeypatch):
    """End to end with a scripted profile (the pool 9x slower in int8) and timer (faster with it
    float): the pool runs float between a DequantizeLinear and a QuantizeLinear, numerics hold."""
    def profile(runner, model, feed, **kwargs):
        quantized = _count(model, "QuantizeLinear") > 0
        if kwargs.get("runs") == 1:  # which kernels run: the pool in float where it is not quantized
            pool = next(n for n in model.graph if n.op_type == "MaxPool")
            return {pool.name: sp.Kernel("MaxPool", 1.0, pool.inputs[0].producer().op_type != "DequantizeLinear")}
        return {n.name: sp.Kernel(n.op_type, (90.0 if quantized else 10.0) if n.op_type == "MaxPool" else 50.0)
                for n in model.graph if n.op_type in ("Conv", "MaxPool")}

    def timed(runner, reference, candidate, feed, **kwargs):
        pool = next(n for n in candidate.graph if n.op_type == "MaxPool")
        ratio = 0.9 if pool.inputs[0].producer().op_type == "DequantizeLinear" else 1.0
        return {"float_ms": 1.0, "quantized_ms": ratio, "ratio": ratio, "rounds": 5, "threads": 1}

    monkeypatch.setattr(sp, "kernel_times", profile)
    monkeypatch.setattr(qdq_module, "compare_latency", timed)
    model = _pool_model()
    before = model.clone()
    result, _, feeds = quantize(model, calibration="minmax", part_timing=True, if_slower="ignore")
    stats = result.stats["part_timing"]
    assert stats["kept_float"] == {"MaxPool": 1} and stats["trials"][0]["part"] == "MaxPool"
    pool = next(n for n in model.graph if n.op_type == "MaxPool")
    assert result.stats["kept_float"] == {sp.SLOWER: 1}
    assert pool.inputs[0].producer().op_type == "DequantizeLinear"
    assert [u.node.op_type for u in pool.outputs[0].uses()] == ["QuantizeLinear"]
    assert result.stats["ops_quantized"] == {"Conv": 2} and "MaxPool" not in result.stats["scale_shared_ops"]
    from tests.passes.quantize.test_qdq import run_both

    ref, got = run_both(before, model, feeds)
    assert np.sqrt(np.mean((got - ref) ** 2)) <= 0.05 * np.abs(ref).max()
    # without the option, nothing is profiled and the pool shares its input's scale
    model = _pool_model()
    result, _, _ = quantize(model, calibration="minmax", part_timing=False, if_slower="ignore")
    assert "part_timing" not in result.stats and result.stats["scale_shared_ops"] == {"MaxPool": 1}


def test_a_softmax_fused_back_is_tried_again_with_its_input_float(monkeypatch):
    """ORT fuses DQ -> Softmax -> Q back into QLinearSoftmax (its real profile says so): the part is
    widened to the Add whose output it reads, and then the softmax runs in float on ORT."""
    from tests.passes.quantize.test_qdq import _seeded, make

    real = sp.kernel_times

    def profile(runner, model, feed, **kwargs):
        if kwargs.get("runs") == 1:  # which kernels run: ask ORT
            return real(runner, model, feed, **kwargs)
        quantized = _count(model, "QuantizeLinear") > 0
        return {n.name: sp.Kernel(n.op_type, (90.0 if quantized else 10.0) if n.op_type == "Softmax" else 50.0)
                for n in model.graph if n.op_type in ("MatMul", "Add", "Softmax")}

    def timed(runner, reference, candidate, feed, **kwargs):
        return {"float_ms": 1.0, "quantized_ms": 0.9, "ratio": 0.9, "rounds": 5, "threads": 1}

    monkeypatch.setattr(sp, "kernel_times", profile)
    monkeypatch.setattr(qdq_module, "compare_latency", timed)
    rand = _seeded(4)
    model = make("a = MatMul(x, w1)\n b = Add(a, c)\n s = Softmax <axis=-1> (b)\n y = MatMul(s, w2)",
                 "(float[1,16,128] x) => (float y)", {"w1": rand(128, 256, scale=0.1), "c": rand(256),
                                                      "w2": rand(256, 64)})
    before = model.clone()
    result, _, feeds = quantize(model, calibration="minmax", part_timing=True, if_slower="ignore")
    (trial,) = result.stats["part_timing"]["trials"]
    assert trial["part"] == "Softmax" and trial["widened"] == 1 and trial["kept_float"]
    assert result.stats["part_timing"]["kept_float"] == {"Add": 1, "Softmax": 1}
    softmax = next(n for n in model.graph if n.op_type == "Softmax")
    assert softmax.inputs[0].producer().op_type == "Add"  # no Q / DQ in front of it any more
    kernels = real(OrtRunner(), model, feeds[0], runs=1, warmup=0)
    assert softmax not in sp.integer_nodes(kernels, model)
    assert [k.op_type for node, k in sp.attribute(kernels, model) if node is softmax] == ["Softmax"]
    from tests.passes.quantize.test_qdq import run_both

    ref, got = run_both(before, model, feeds)
    assert np.sqrt(np.mean((got - ref) ** 2)) <= 0.05 * np.abs(ref).max()

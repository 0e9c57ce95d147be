"""The measured speed check of quantize-qdq (`if-slower=warn|keep-float|ignore`)."""

from __future__ import annotations

import pytest

from onnxpress.backends.ort import OrtRunner
from onnxpress.passes.quantize import qdq as qdq_module
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
        raise AssertionError("timed a model over TIMING_MAX_BYTES")
    monkeypatch.setattr(qdq_module, "compare_latency", fail)
    monkeypatch.setattr(qdq_module, "TIMING_MAX_BYTES", 0)
    model = conv_relu_model()
    result, _, _ = quantize(model, calibration="minmax", fallback="auto", target_sqnr=99.0)
    assert result.stats["speed"]["skipped"].startswith("weights over")
    assert "slowdown" not in result.stats["fallback"] and _count(model, "QuantizeLinear") > 0

"""quantize-qdq's sensitivity fallback: noisy tensors found from histograms, kept float only where
the measured output fidelity says so, within the MAC budget."""

from __future__ import annotations

import math

import numpy as np
import pytest

from onnxpress.passes.quantize import fallback as fb
from onnxpress.passes.quantize import quant_math as qm
from tests.passes.quantize.test_qdq import conv_relu_model, make, nodes, quantize, rand, run_both

UINT8 = qm.quant_type("uint8")


def test_noise_of_a_uniform_tensor_is_the_rounding_noise():
    # Values uniform over exactly the quantized range: noise s²/12 over variance (255 s)²/12.
    scale = 0.02
    edges = np.linspace(0.0, 255 * scale, 255 * 16 + 1)
    noise = fb.tensor_noise_db(np.ones(255 * 16), edges, scale, 0, UINT8)
    assert noise == pytest.approx(-20 * math.log10(255), abs=0.2)
    # The same values under a range half as wide: the clipped half dominates, far above rounding.
    clipped = fb.tensor_noise_db(np.ones(255 * 16), edges, scale / 2, 0, UINT8)
    assert clipped > -10 > noise
    assert fb.tensor_noise_db(np.zeros(4), np.linspace(0, 1, 5), scale, 0, UINT8) == -math.inf


def test_output_sqnr_takes_the_worst_output():
    ref = [{"a": np.ones(4), "b": np.ones(4)}]
    got = [{"a": np.ones(4) * 1.1, "b": np.ones(4) * 1.01}]
    assert fb.output_sqnr_db(ref, got, ["a", "b"]) == pytest.approx(20.0, abs=1e-6)
    assert fb.output_sqnr_db(ref, ref, ["a"]) == math.inf


def _outlier_model():
    # h has one channel 300x the others; the next MatMul ignores it (its weight row is 0), so one
    # per-tensor scale on h spends all 8 bits on a channel that does not matter downstream.
    w1 = rand(16, 16, scale=0.3)
    w1[:, 0] *= 300
    w2 = rand(16, 8)
    w2[0] = 0.0
    return make("h = MatMul(x, w1)\n y = MatMul(h, w2)", "(float[8,16] x) => (float y)", {"w1": w1, "w2": w2})


def test_fallback_keeps_the_noisy_tensor_float_and_fixes_the_output():
    model = _outlier_model()
    before = model.clone()
    result, _, feeds = quantize(model, calibration="minmax", fallback="auto", max_float_macs=1.0)
    stats = result.stats["fallback"]
    assert list(stats["float_tensors"]) == ["h"] and stats["met"] and stats["sqnr_db"] >= 20.0
    assert stats["sqnr_db_all_quantized"] < 20.0 and stats["float_nodes"] == 1
    first, second = nodes(model, "MatMul")
    # Only the reader of h goes float: the first MatMul still runs integer with a float output.
    assert result.stats["ops_quantized"] == {"MatMul": 1}
    assert result.stats["kept_float_nodes"] == {second.name or "<MatMul>": fb.SENSITIVE}
    assert first.inputs[1].producer().op_type == "DequantizeLinear"
    assert second.inputs[0].producer() is first and second.inputs[1].name == "w2"
    ref, got = run_both(before, model, feeds)
    sqnr = 10 * np.log10(np.sum(ref.astype(np.float64) ** 2) / np.sum((ref - got).astype(np.float64) ** 2))
    assert sqnr >= 20.0

    everything = _outlier_model()
    result, _, _ = quantize(everything, feeds, calibration="minmax", fallback="none")
    assert "fallback" not in result.stats and result.stats["ops_quantized"] == {"MatMul": 2}
    _, got_all = run_both(before, everything, feeds)
    assert np.abs(got_all - ref).max() > 3 * np.abs(got - ref).max()


def test_fallback_respects_the_mac_budget_and_a_met_target():
    model = _outlier_model()
    result, _, _ = quantize(model, calibration="minmax", fallback="auto", max_float_macs=0.0)
    stats = result.stats["fallback"]
    assert not stats["float_tensors"] and not stats["met"] and result.stats["ops_quantized"] == {"MatMul": 2}
    # A model already above the target: one trial, nothing kept float.
    model = conv_relu_model()
    result, _, _ = quantize(model, fallback="auto", target_sqnr=0.0)
    stats = result.stats["fallback"]
    assert stats["met"] and stats["trials"] == 1 and stats["float_nodes"] == 0
    assert "sensitive (fallback)" not in result.stats["kept_float"]


@pytest.mark.parametrize(("ratios", "kept_float"), [((1.5, 1.5), False), ((1.02,), True), ((1.5, 1.02), True)],
                         ids=["too-slow", "within-budget", "too-slow-once"])
def test_fallback_leaves_quantized_what_makes_the_model_slower(monkeypatch, ratios, kept_float):
    # the timer reports the latency with the tensor float relative to the all-quantized model; a
    # slow verdict is timed a second time before the tensor is given up
    from onnxpress.passes.quantize import qdq as qdq_module

    timings = iter(ratios)
    ratio = ratios[-1]

    def timed(runner, reference, candidate, feed, **kwargs):
        r = next(timings)
        return {"float_ms": 1.0, "quantized_ms": r, "ratio": r, "rounds": 5, "threads": 1}

    monkeypatch.setattr(qdq_module, "compare_latency", timed)
    model = _outlier_model()
    result, _, _ = quantize(model, calibration="minmax", fallback="auto", max_float_macs=1.0, max_slowdown=0.05,
                            if_slower="ignore")
    stats = result.stats["fallback"]
    assert (list(stats["float_tensors"]) == ["h"]) is kept_float
    assert stats["too_slow"] == ([] if kept_float else ["h"])
    assert stats["slowdown"] == (ratio if kept_float else 1.0)
    assert result.stats["ops_quantized"] == ({"MatMul": 1} if kept_float else {"MatMul": 2})

"""Activation-aware importance (`prune-channels{importance=activation}`) and its calibration."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

import onnxpress
from onnxpress.backends.ort import OrtRunner
from onnxpress.passes.manager import PassContext
from onnxpress.passes.pruning.calibration import mean_abs_activation
from onnxpress.passes.pruning.dependency import ChannelDependencyAnalysis
from tests.passes.pruning._models import Builder


def dead_unit_mlp() -> tuple[ir.Model, np.ndarray, np.ndarray]:
    """x >= 0 [4, 8] -> MatMul w1 + b1 -> Relu -> MatMul w2 -> y, 6 hidden units.

    Unit 0 has the largest weights of all but only negative weights into a positive input, so the
    Relu silences it; unit 5 has the smallest weights and is busy.
    """
    b = Builder(seed=0)
    w1 = np.abs(b.rand(8, 6)) + 0.2
    w2 = b.rand(6, 3)
    w1[:, 0], w2[0] = -3.0 * w1[:, 0], 3.0 * np.sign(w2[0])
    w1[:, 5], w2[5] = 0.5 * w1[:, 5], 0.3 * np.sign(w2[5])
    b1 = np.full(6, 0.1, np.float32)
    h = b.op("MatMul", [b.input("x", [4, 8]), b.init("w1", w1)], name="fc1")
    h = b.op("Relu", [b.op("Add", [h, b.init("b1", b1)])], name="relu")
    model = b.model([b.op("MatMul", [h, b.init("w2", w2)], name="fc2")])
    return model, w1, b1


def positive_feeds(n: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(1)
    return [{"x": rng.uniform(0.0, 1.0, (4, 8)).astype(np.float32)} for _ in range(n)]


def removed_units(options: str) -> list[int]:
    model, _, _ = dead_unit_mlp()
    result = onnxpress.optimize(model, f"prune-channels{{{options}}}", data=positive_feeds(8))
    return result.model.meta["onnxpress.pruning_plan"]["tensors"]["w1"]["1"]


def test_activation_importance_removes_the_silent_unit_that_l2_keeps():
    assert removed_units("ratio=0.15 importance=l2") == [5]
    assert removed_units("ratio=0.15 importance=activation") == [0]


def test_mean_abs_activation_is_measured_after_the_relu():
    model, w1, b1 = dead_unit_mlp()
    deps = ChannelDependencyAnalysis().compute(model, None)
    feeds = positive_feeds(5)
    with PassContext(runner=OrtRunner(), data=feeds) as ctx:
        measured = mean_abs_activation(model, deps, ctx, limit=4)
    (group,) = [g for g in deps.groups() if g.prunable]
    hidden = deps.slot(model.graph.node("relu").outputs[0])
    assert set(measured) == set(group.prunable)
    x = np.concatenate([f["x"] for f in feeds[:4]])
    want = np.abs(np.maximum(x @ w1 + b1, 0)).mean(axis=0)
    got = [measured[deps.find(int(e))] for e in hidden.elements]
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert got[0] == 0.0


def test_mean_abs_activation_without_runner_or_data_is_empty():
    model, _, _ = dead_unit_mlp()
    deps = ChannelDependencyAnalysis().compute(model, None)
    with PassContext(runner=None, data=positive_feeds(2)) as ctx:
        assert mean_abs_activation(model, deps, ctx, limit=2) == {}
    with PassContext(runner=OrtRunner(), data=None) as ctx:
        assert mean_abs_activation(model, deps, ctx, limit=2) == {}

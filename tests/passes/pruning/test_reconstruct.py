"""Least-squares reconstruction after pruning (`prune-channels{reconstruct=true}`) and its pieces."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

import onnxpress
from onnxpress.backends.ort import OrtRunner
from onnxpress.passes.manager import PassContext
from onnxpress.passes.pruning.calibration import GramAccumulator, iter_values
from onnxpress.passes.pruning.plan import PruningPlan
from onnxpress.passes.pruning.reconstruct import _consumer, conv_rows, reconstruct_consumers
from tests.passes.pruning._models import Builder, arrays
from tests.util import run


# -- models with structure ----------------------------------------------------------------------
def token_mlp(seed: int = 0) -> ir.Model:
    """x [B, S, 16] -> MatMul+Add -> Relu -> MatMul+Add -> Relu -> Gemm(transB) over the last token."""
    b = Builder(seed=seed)
    x = b.input("x", [2, 6, 16])
    h = b.op("MatMul", [x, b.init("w1", b.rand(16, 16) / 4)], name="fc1")
    h = b.op("Relu", [b.op("Add", [h, b.init("b1", b.rand(16) / 10)])])
    h = b.op("Relu", [b.op("Add", [b.op("MatMul", [h, b.init("w2", b.rand(16, 24) / 4)], name="fc2"),
                                   b.init("b2", b.rand(24) / 10)])])
    last = b.op("Reshape", [b.op("Slice", [h, b.ints("s0", [5]), b.ints("s1", [6]), b.ints("ax", [1])]),
                            b.ints("shape", [2, 24])])
    y = b.op("Gemm", [last, b.init("w3", b.rand(8, 24) / 4), b.init("b3", b.rand(8) / 10)], name="fc3", transB=1)
    return b.model([y])


def token_feeds(n: int, seed: int) -> list[dict[str, np.ndarray]]:
    """Inputs on a 4-dimensional subspace plus a little noise: hidden activations are correlated."""
    rng = np.random.default_rng(seed)
    basis = np.random.default_rng(99).standard_normal((4, 16))
    return [{"x": (rng.standard_normal((2, 6, 4)) @ basis + 0.05 * rng.standard_normal((2, 6, 16))).astype(np.float32)}
            for _ in range(n)]


def conv_net(seed: int = 0) -> ir.Model:
    """3 -> 16 (3x3) -> Relu -> 16 (3x3, stride 2) -> Relu -> 8 (1x1): the middle conv loses inputs and outputs."""
    b = Builder(seed=seed)
    x = b.input("x", [2, 3, 12, 12])
    h = b.op("Relu", [b.conv(x, b.rand(16, 3, 3, 3) / 3, b.rand(16) / 10, name="c1")])
    h = b.op("Relu", [b.conv(h, b.rand(16, 16, 3, 3) / 8, b.rand(16) / 10, name="c2", strides=[2, 2])])
    return b.model([b.conv(h, b.rand(8, 16, 1, 1) / 4, b.rand(8) / 10, name="c3")])


def image_feeds(n: int, seed: int) -> list[dict[str, np.ndarray]]:
    """Smooth images (4x4 noise blown up 3x, plus a little noise)."""
    rng = np.random.default_rng(seed)
    feeds = []
    for _ in range(n):
        coarse = rng.standard_normal((2, 3, 4, 4))
        feeds.append({"x": (np.kron(coarse, np.ones((3, 3))) + 0.05 * rng.standard_normal((2, 3, 12, 12)))
                      .astype(np.float32)})
    return feeds


def upsampling_head(seed: int = 0, kernel: int = 2, stride: int = 2, pad: int = 0) -> ir.Model:
    """3 -> 16 (3x3) -> Relu -> ConvTranspose 16 -> 8 -> Relu -> ConvTranspose 8 -> 1: a DB-style head."""
    b = Builder(seed=seed)
    x = b.input("x", [2, 3, 12, 12])
    h = b.op("Relu", [b.conv(x, b.rand(16, 3, 3, 3) / 3, b.rand(16) / 10, name="c1")])
    attrs = {"kernel_shape": [kernel] * 2, "strides": [stride] * 2, "pads": [pad] * 4}
    h = b.op("Relu", [b.op("ConvTranspose", [h, b.init("t1.w", b.rand(16, 8, kernel, kernel) / 4),
                                             b.init("t1.b", b.rand(8) / 10)], name="t1", **attrs)])
    return b.model([b.op("ConvTranspose", [h, b.init("t2.w", b.rand(8, 1, kernel, kernel) / 3),
                                           b.init("t2.b", b.rand(1) / 10)], name="t2", **attrs)])


def relative_error(reference: ir.Model, model: ir.Model, feeds: list[dict]) -> float:
    want = np.concatenate([next(iter(r.values())) for r in run(reference, feeds)])
    got = np.concatenate([next(iter(r.values())) for r in run(model, feeds)])
    return float(np.linalg.norm(got - want) / np.linalg.norm(want))


def prune(model: ir.Model, options: str, feeds: list[dict]) -> tuple[ir.Model, dict]:
    result = onnxpress.optimize(model, f"prune-channels{{{options}}}", data=feeds)
    return result.model, result.report.passes[-1]["stats"]


# -- end to end ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("build", "data", "expected_layers", "factor"),
    # measured: MLP 0.62 -> 0.19, conv net (random weights, harder to compensate) 0.85 -> 0.53
    [(token_mlp, token_feeds, {"fc2", "fc3"}, 0.5), (conv_net, image_feeds, {"c2", "c3"}, 0.75)],
    ids=["mlp-matmul-gemm", "convnet"],
)
def test_reconstruction_lowers_the_output_error(build, data, expected_layers, factor):
    model = build()
    calibration, held_out = data(48, seed=1), data(16, seed=2)
    plain, _ = prune(model, "ratio=0.5", calibration)
    refit, stats = prune(model, "ratio=0.5 reconstruct=true", calibration)
    assert {name: v.const_value.shape for name, v in plain.graph.initializers.items()} == {
        name: v.const_value.shape for name, v in refit.graph.initializers.items()}
    rec = stats["reconstructed"]
    assert set(rec["per_layer"]) == expected_layers and rec["layers"] == len(expected_layers)
    for layer in rec["per_layer"].values():
        assert layer["error_after"] < layer["error_before"]
    before, after = relative_error(model, plain, held_out), relative_error(model, refit, held_out)
    assert after < factor * before, (before, after)


def test_transposed_convolutions_whose_kernel_is_the_stride_are_refitted():
    # measured: 0.68 -> 0.54 on the held-out images (random weights; nothing was refitted before)
    model = upsampling_head()
    calibration, held_out = image_feeds(32, seed=1), image_feeds(16, seed=2)
    plain, _ = prune(model, "ratio=0.5", calibration)
    refit, stats = prune(model, "ratio=0.5 reconstruct=true", calibration)
    assert stats["layers"] == {"c1": "16->8", "t1": "8->4"}
    rec = stats["reconstructed"]
    assert set(rec["per_layer"]) == {"t1", "t2"} and rec["layers"] == 2
    bias = refit.graph.initializers["t1.b"].const_value.numpy()
    assert bias.shape == (4,)
    before, after = relative_error(model, plain, held_out), relative_error(model, refit, held_out)
    assert after < 0.85 * before, (before, after)


def test_obs_importance_measures_transposed_convolution_consumers():
    # the c1 and t1 groups are read only by ConvTranspose layers; measured 0.538 (L2) vs 0.500 (OBS)
    model = upsampling_head()
    calibration, held_out = image_feeds(32, seed=1), image_feeds(16, seed=2)
    l2, _ = prune(model, "ratio=0.5 reconstruct=true", calibration)
    obs, _ = prune(model, "ratio=0.5 importance=obs reconstruct=true", calibration)
    assert relative_error(model, obs, held_out) < 0.97 * relative_error(model, l2, held_out)


def test_overlapping_transposed_convolutions_are_skipped_with_a_reason():
    model = upsampling_head(kernel=3, stride=2, pad=1)
    _, stats = prune(model, "ratio=0.5 reconstruct=true", image_feeds(8, seed=1))
    rec = stats["reconstructed"]
    assert rec["layers"] == 0
    assert set(rec["skipped"]) == {"t1", "t2"}
    assert "kernel differs from its stride" in rec["skipped"]["t1"]


def test_reconstruction_is_exact_when_removed_channels_are_scaled_copies():
    # x -> fc1 (hidden units 8..15 = 0.4 x units 0..7) -> Relu -> fc2 + b2 -> y: L2 removes the
    # smaller copies, and relu(0.4 h) = 0.4 relu(h), so the refit of fc2 can fold them back exactly.
    b = Builder(seed=0)
    w1, b1, w2 = b.rand(16, 16), b.rand(16) / 10, b.rand(16, 8)
    w1, w2 = w1 / np.linalg.norm(w1, axis=0), w2 / np.linalg.norm(w2, axis=1, keepdims=True)
    w1[:, 8:], b1[8:], w2[8:] = 0.4 * w1[:, :8], 0.4 * b1[:8], 0.4 * w2[:8]
    h = b.op("MatMul", [b.input("x", [2, 6, 16]), b.init("w1", w1)], name="fc1")
    h = b.op("Relu", [b.op("Add", [h, b.init("b1", b1)])])
    y = b.op("Add", [b.op("MatMul", [h, b.init("w2", w2)], name="fc2"), b.init("b2", b.rand(8))])
    model = b.model([y])
    calibration, held_out = token_feeds(16, seed=1), token_feeds(8, seed=2)
    plain, _ = prune(model, "ratio=0.5", calibration)
    refit, stats = prune(model, "ratio=0.5 reconstruct=true auto-ridge=false ridge=1e-9", calibration)
    assert stats["layers"] == {"fc1": "16->8"}
    assert stats["reconstructed"]["per_layer"]["fc2"]["error_after"] < 1e-4
    assert relative_error(model, plain, held_out) > 0.05
    assert relative_error(model, refit, held_out) < 1e-4


def test_reconstruction_never_writes_into_the_original_weights():
    model = conv_net()
    before = {k: v.copy() for k, v in arrays(model).items()}
    prune(model, "ratio=0.5 reconstruct=true", image_feeds(8, seed=1))
    after = arrays(model)
    for name, array in before.items():
        np.testing.assert_array_equal(after[name], array, err_msg=name)


def test_without_runner_or_data_nothing_is_refitted():
    model = token_mlp()
    plan = PruningPlan({"w2": {0: [0, 1]}}, [], 0, 0, [])
    with PassContext(runner=None, data=token_feeds(2, seed=0)) as ctx:
        assert reconstruct_consumers(model, model, plan, ctx)["layers"] == 0
    with PassContext(runner=OrtRunner(), data=None) as ctx:
        assert reconstruct_consumers(model, model, plan, ctx)["layers"] == 0


# -- pieces -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "attrs",
    [
        {"strides": [2, 1], "pads": [1, 0, 2, 1], "dilations": [1, 2]},
        {"auto_pad": "SAME_UPPER", "strides": [2, 2]},
        {"auto_pad": "SAME_LOWER", "strides": [2, 2]},
        {"auto_pad": "VALID", "dilations": [2, 1]},
    ],
    ids=["explicit", "same-upper", "same-lower", "valid"],
)
def test_conv_rows_reproduce_the_convolution(attrs):
    b = Builder(seed=3)
    x = b.input("x", [2, 3, 9, 8])
    w, bias = b.rand(5, 3, 3, 2), b.rand(5)
    y = b.op("Conv", [x, b.init("w", w), b.init("b", bias)], name="conv", **attrs)
    model = b.model([y])
    feed = {"x": b.rand(2, 3, 9, 8)}
    want = run(model, [feed])[0][y]
    out_spatial = want.shape[2:]
    positions = np.arange(2 * int(np.prod(out_spatial)))
    node = next(iter(model.graph))
    rows = conv_rows(feed["x"], node, (3, 2), tuple(out_spatial), positions)
    got = (rows @ w.reshape(5, -1).T + bias).reshape(2, *out_spatial, 5)
    np.testing.assert_allclose(np.moveaxis(got, -1, 1), want, rtol=1e-4, atol=1e-5)
    subset = np.array([0, 7, len(positions) - 1])
    np.testing.assert_array_equal(conv_rows(feed["x"], node, (3, 2), tuple(out_spatial), subset), rows[subset])


def test_gram_accumulator_matches_direct_least_squares():
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((300, 6)), rng.standard_normal((300, 3))
    acc = GramAccumulator(6, 3)
    for part in np.array_split(np.arange(300), 4):
        acc.update(x[part], y[part])
    w, b = acc.solve(0.0)
    augmented = np.hstack([x, np.ones((300, 1))])
    want = np.linalg.lstsq(augmented, y, rcond=None)[0]
    np.testing.assert_allclose(np.vstack([w, b]), want, atol=1e-8)
    direct = np.linalg.norm(x @ w + b - y) / np.linalg.norm(y)
    assert acc.relative_error(w, b) == pytest.approx(direct, rel=1e-8)
    w0, none = acc.solve(0.0, bias=False)
    assert none is None
    np.testing.assert_allclose(w0, np.linalg.lstsq(x, y, rcond=None)[0], atol=1e-8)
    # heavy damping pulls the weights to the prior
    prior = rng.standard_normal((6, 3))
    np.testing.assert_allclose(acc.solve(1e9, bias=False, prior=prior)[0], prior, atol=1e-6)


def test_tied_bias_solve_matches_direct_least_squares():
    # columns in runs of 4 share one bias (a ConvTranspose's 2x2 output block)
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((200, 5)), rng.standard_normal((200, 8))
    acc = GramAccumulator(5, 8)
    acc.update(x, y)
    w, b = acc.solve(1e-12, tie=4)
    design = np.zeros((200 * 8, 5 * 8 + 2))
    for j in range(8):
        design[j * 200:(j + 1) * 200, j * 5:(j + 1) * 5] = x
        design[j * 200:(j + 1) * 200, 40 + j // 4] = 1.0
    want = np.linalg.lstsq(design, y.T.reshape(-1), rcond=None)[0]
    np.testing.assert_allclose(w, want[:40].reshape(8, 5).T, atol=1e-8)
    np.testing.assert_allclose(b, np.repeat(want[40:], 4), atol=1e-8)


def test_transposed_conv_rows_reproduce_the_layer():
    model = upsampling_head()
    node = next(n for n in model.graph if n.name == "t1")
    layer = _consumer(node, PruningPlan({"t1.w": {0: [0]}}, [], 0, 0, []), model.graph)
    feed = image_feeds(1, seed=4)[0]
    names = [node.inputs[0].name, node.outputs[0].name]
    values = next(iter_values(OrtRunner(optimization_level="disable"), [(model, names)], [feed]))[0]
    x, y = values[node.inputs[0].name], values[node.outputs[0].name]
    rows, targets = layer.rows(x, y, np.random.default_rng(0), cap=10 ** 6)
    assert rows.shape == (2 * 12 * 12, 16) and targets.shape == (2 * 12 * 12, 8 * 4)
    w_eff, b_eff = layer.effective()
    np.testing.assert_allclose(rows @ w_eff + b_eff, targets, rtol=1e-4, atol=1e-5)


def test_iter_values_lines_up_feeds_and_models_in_small_chunks():
    model = token_mlp()
    other = token_mlp(seed=5)
    feeds = token_feeds(7, seed=0)
    full = OrtRunner(optimization_level="disable")
    names = ["fc1_out0", "x"]
    rows = list(iter_values(full, [(model, names), (other, ["fc2_out0"])], feeds, chunk_bytes=1))
    assert len(rows) == 7
    w1 = model.graph.initializers["w1"].const_value.numpy()
    w2 = other.graph.initializers["w2"].const_value.numpy()
    for feed, (mine, theirs) in zip(feeds, rows):
        assert set(mine) == set(names)
        np.testing.assert_array_equal(mine["x"], feed["x"])
        np.testing.assert_allclose(mine["fc1_out0"], feed["x"] @ w1, rtol=1e-5, atol=1e-5)
        assert theirs["fc2_out0"].shape == (2, 6, w2.shape[1])
    assert [v.name for v in model.graph.outputs] == ["fc3_out0"]  # the caller's model is untouched


# -- one-shot vs sequential, and reconstruction-aware importance --------------------------------
@pytest.mark.parametrize("sequential", [False, True], ids=["one-shot", "sequential"])
def test_both_refit_orders_lower_the_held_out_error(sequential):
    model = conv_net()
    calibration, held_out = image_feeds(48, seed=1), image_feeds(16, seed=2)
    plain, _ = prune(model, "ratio=0.5", calibration)
    refit, stats = prune(model, f"ratio=0.5 reconstruct=true sequential={str(sequential).lower()}", calibration)
    assert stats["reconstructed"]["layers"] == 2
    assert relative_error(model, refit, held_out) < 0.8 * relative_error(model, plain, held_out)


@pytest.mark.parametrize("kind", ["matmul", "conv"])
def test_obs_cost_is_the_error_left_after_an_exact_refit(kind):
    from onnxpress.passes.pruning.obs import _block_costs
    from onnxpress.passes.pruning.layers import RefitLayer

    model = token_mlp() if kind == "matmul" else conv_net()
    node = next(n for n in model.graph if n.name == ("fc2" if kind == "matmul" else "c2"))
    feeds = token_feeds(8, seed=3) if kind == "matmul" else image_feeds(8, seed=3)
    x_name, y_name = node.inputs[0].name, node.outputs[0].name
    layer = RefitLayer(node, node.inputs[1], None)
    rng = np.random.default_rng(0)
    rows = [layer.rows(v[x_name], v[y_name], rng, 10**6)[0]
            for (v,) in iter_values(OrtRunner(), [(model, [x_name, y_name])], feeds)]
    x = np.concatenate(rows).astype(np.float64)
    w = layer.effective()[0]
    acc = GramAccumulator(x.shape[1], 1)
    acc.update(x, np.zeros((len(x), 1)))
    costs = _block_costs(layer, acc, damping=1e-12)
    taps = layer.taps
    assert len(costs) == x.shape[1] // taps
    y = x @ w
    for j in (0, 3, len(costs) - 1):
        keep = np.setdiff1d(np.arange(x.shape[1]), np.arange(j * taps, (j + 1) * taps))
        augmented = np.hstack([x[:, keep], np.ones((len(x), 1))])
        fit = np.linalg.lstsq(augmented, y, rcond=None)[0]
        left = float(np.square(augmented @ fit - y).sum())
        assert costs[j] == pytest.approx(left, rel=1e-5, abs=1e-8 * float(np.square(y).sum()))


def test_obs_importance_with_reconstruction_beats_magnitude():
    model = token_mlp()
    calibration, held_out = token_feeds(48, seed=1), token_feeds(16, seed=2)
    errors = {}
    for importance in ("l2", "obs"):
        pruned, stats = prune(model, f"ratio=0.5 importance={importance} reconstruct=true", calibration)
        assert stats["layers"]["fc1"] == "16->8"
        errors[importance] = relative_error(model, pruned, held_out)
    assert errors["obs"] < 0.8 * errors["l2"], errors


def test_obs_importance_without_data_falls_back_to_l2():
    model = token_mlp()
    with_obs = onnxpress.optimize(model, "prune-channels{ratio=0.5 importance=obs}").model
    with_l2 = onnxpress.optimize(model, "prune-channels{ratio=0.5 importance=l2}").model
    assert arrays(with_obs).keys() == arrays(with_l2).keys()
    for name, array in arrays(with_l2).items():
        np.testing.assert_array_equal(arrays(with_obs)[name], array)


def test_auto_ridge_is_chosen_on_held_out_feeds_and_lowers_the_error():
    from onnxpress.passes.pruning.reconstruct import RIDGE_CANDIDATES

    model = conv_net()
    calibration, held_out = image_feeds(48, seed=1), image_feeds(16, seed=2)
    plain, _ = prune(model, "ratio=0.5", calibration)
    refit, stats = prune(model, "ratio=0.5 reconstruct=true auto-ridge=true", calibration)
    layers = stats["reconstructed"]["per_layer"]
    assert layers and all(layer["refitted"] and layer["ridge"] in RIDGE_CANDIDATES for layer in layers.values())
    assert relative_error(model, refit, held_out) < 0.8 * relative_error(model, plain, held_out)


def test_auto_ridge_leaves_a_layer_alone_when_no_fit_helps_on_held_out_feeds():
    # the layer's weights already reproduce the held-out feeds (every 4th) exactly; the other feeds'
    # targets carry noise, so any refit moves away from what the held-out feeds show
    from onnxpress.passes.pruning.layers import RefitLayer
    from onnxpress.passes.pruning.reconstruct import _SplitGram, _solve

    b = Builder(seed=0)
    y = b.op("MatMul", [b.input("x", [4, 8]), b.init("w", b.rand(8, 3))], name="fc")
    model = b.model([y])
    node = next(iter(model.graph))
    layer = RefitLayer(node, node.inputs[1], None)
    split = _SplitGram(8, 3, feeds=8)
    rng = np.random.default_rng(0)
    w = model.graph.initializers["w"].const_value.numpy().astype(np.float64)
    for i in range(8):
        x = rng.standard_normal((4, 8))
        split.update(x, x @ w + (0.0 if i % 4 == 3 else rng.standard_normal((4, 3))))
    before = model.graph.initializers["w"].const_value.numpy().copy()
    result = _solve(layer, split, None)
    assert not result["refitted"] and result["reason"] == "no ridge lowers the held-out error"
    np.testing.assert_array_equal(model.graph.initializers["w"].const_value.numpy(), before)

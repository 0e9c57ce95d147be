"""prune-channels counts: pruned shapes and parameters against hand-computed numbers, and every
option (ratio, round-to, ignore, scope=global with max-layer-ratio, layer-ratios) and its errors."""

from __future__ import annotations

import numpy as np
import pytest

from onnxpress.errors import PipelineError
from onnxpress.passes import PassManager
from tests.passes.pruning._models import Builder, conv_chain, prune, shapes


def _kept(model, name: str = "conv1") -> int:
    return shapes(model)[f"{name}.w"][0]


def test_chain_shapes_and_params_match_hand_counts():
    model, result, pass_ = prune(conv_chain((16, 16)), "ratio=0.5", check="runs")
    s = shapes(model)
    assert s["conv1.w"] == [8, 3, 3, 3] and s["conv1.b"] == [8]
    assert s["conv2.w"] == [8, 8, 3, 3] and s["conv2.b"] == [8]
    assert s["head.w"] == [4, 8, 1, 1]  # the head's outputs are a graph output: frozen
    # before: 16*27+16 + 16*16*9+16 + 4*16 = 448 + 2320 + 64; after: 8*27+8 + 8*8*9+8 + 4*8
    assert (pass_.plan.params_before, pass_.plan.params_after) == (2832, 840)
    layers = {layer["name"]: (layer["channels_before"], layer["channels_after"]) for layer in pass_.plan.layers}
    assert layers == {"conv1": (16, 8), "conv2": (16, 8)}


def test_pass_stats_report_channels_and_params():
    from onnxpress.passes.pruning import PruneChannelsPass

    model = conv_chain((16, 12))
    PassManager.from_pipeline("infer-shapes")(model)
    result = PruneChannelsPass(ratio=0.25)(model)
    # conv1 16 -> 12, conv2 12 -> 9: 448 + 1740 + 48 = 2236 before; 12*27+12 + 9*12*9+9 + 4*9 = 1353 after
    assert result.stats["channels_removed"] == 7
    assert result.stats["params_removed"] == 2236 - 1353
    assert result.stats["layers"] == {"conv1": "16->12", "conv2": "12->9"}


def test_uneven_ratio_floors_the_count():
    # 0.57 * 100 is 56.99999999999999 in floating point: still 57 channels go
    b = Builder()
    x = b.input("x", [1, 3, 2, 2])
    y = b.conv(b.op("Relu", [b.conv(x, b.rand(100, 3, 1, 1), name="conv1")]), b.rand(2, 100, 1, 1), name="head")
    model, _, _ = prune(b.model([y]), "ratio=0.57 max-layer-ratio=1.0", check=False)
    assert _kept(model) == 43


def test_frozen_groups_untouched():
    b = Builder()
    x = b.input("x", [1, 8, 8, 8])
    h = b.conv(x, b.rand(8, 8, 3, 3), name="res")  # tied to the graph input by the Add: frozen
    h = b.op("Relu", [b.op("Add", [h, x])])
    h = b.op("Relu", [b.conv(h, b.rand(12, 8, 3, 3), name="conv1")])
    y = b.conv(h, b.rand(4, 12, 1, 1), name="head")
    model, result, pass_ = prune(b.model([y]), "ratio=0.5", check="runs")
    s = shapes(model)
    assert s["res.w"] == [8, 8, 3, 3] and s["conv1.w"] == [6, 8, 3, 3] and s["head.w"] == [4, 6, 1, 1]


@pytest.mark.parametrize(("ratio", "round_to", "kept"), [
    (0.5, 1, 8), (0.6, 8, 8), (0.4, 4, 12), (0.3, 8, 16), (0.7, 3, 6), (0.45, 16, 16)])
def test_round_to(ratio, round_to, kept):
    model, result, _ = prune(conv_chain((16, 16)), f"ratio={ratio} round-to={round_to}", check=False)
    assert _kept(model, "conv1") == _kept(model, "conv2") == kept
    assert kept % round_to == 0 or kept == 16


@pytest.mark.parametrize(("ignore", "kept1", "kept2"), [
    ("conv1", 16, 8), ("conv2", 8, 16), ("conv1,conv2", 16, 16), ("re:conv[12]", 16, 16), ("re:2$", 8, 16),
    ("op:Conv", 16, 16), ("op:Gemm", 8, 8), ("nothing", 8, 8)])
def test_ignore(ignore, kept1, kept2):
    model, result, _ = prune(conv_chain((16, 16)), f"ratio=0.5 ignore={ignore}", check=False)
    s = shapes(model)
    assert (s["conv1.w"][0], s["conv2.w"][0]) == (kept1, kept2)
    assert s["conv2.w"][1] == kept1  # an ignored conv2 still loses the input channels conv1 lost


def _skewed_chain():
    """conv1: 12 channels 100x weaker than its other 4; conv2: all alike."""
    weak = np.where(np.arange(16) < 12, 0.01, 1.0).astype(np.float32)
    return conv_chain((16, 16), scale=[weak, np.ones(16, np.float32)])


@pytest.mark.parametrize(("cap", "kept1", "kept2"), [(0.8, 4, 16), (0.5, 8, 12), (1.0, 4, 16)])
def test_global_scope_with_layer_cap(cap, kept1, kept2):
    # budget = 40 % of 32 prunable = 6 + 6 = 12 channels; the weak ones of conv1 go first
    model, result, _ = prune(_skewed_chain(), f"ratio=0.375 scope=global max-layer-ratio={cap}", check=False)
    assert (_kept(model, "conv1"), _kept(model, "conv2")) == (kept1, kept2)


def test_uniform_scope_ignores_the_skew():
    model, result, _ = prune(_skewed_chain(), "ratio=0.375", check=False)
    assert (_kept(model, "conv1"), _kept(model, "conv2")) == (10, 10)


def test_max_layer_ratio_caps_uniform_too():
    model, result, _ = prune(conv_chain((16, 16)), "ratio=0.9 max-layer-ratio=0.5", check=False)
    assert (_kept(model, "conv1"), _kept(model, "conv2")) == (8, 8)


@pytest.mark.parametrize(("rules", "kept1", "kept2"), [
    ("conv1=0.5", 8, 12), ("re:conv2=0", 12, 16), ("op:Conv=0.5", 8, 8), ("re:conv=0.75,conv2=0.5", 4, 4)])
def test_layer_ratios_override(rules, kept1, kept2):
    model, result, _ = prune(conv_chain((16, 16)), f"ratio=0.25 layer-ratios={rules}", check=False)
    assert (_kept(model, "conv1"), _kept(model, "conv2")) == (kept1, kept2)


def test_ratio_zero_changes_nothing():
    model, result, pass_ = prune(conv_chain((16, 16)), "ratio=0")
    assert not result.modified and pass_.plan is None
    assert shapes(model)["conv1.w"] == [16, 3, 3, 3]


@pytest.mark.parametrize(("options", "message"), [
    ("ratio=1.5", "ratio"), ("ratio=-0.1", "ratio"), ("ratio=abc", "ratio"), ("ratio=1", "ratio"),
    ("importance=magic", "importance"), ("aggregate=median", "aggregate"), ("scope=local", "scope"),
    ("round-to=0", "round-to"), ("round-to=x", "round-to"), ("max-layer-ratio=0", "max-layer-ratio"),
    ("max-layer-ratio=1.5", "max-layer-ratio"), ("layer-ratios=conv1=2", "layer-ratios"),
    ("layer-ratios=conv1", "layer-ratios"), ("layer-ratios=conv1=x", "layer-ratios"),
    ("layer-ratios=re:[=0.5", "regular expression"), ("ignore=re:[", "regular expression"),
    ("ratoi=0.5", "ratio"), ("lossy-norms=maybe", "lossy-norms")])
def test_option_errors_are_pipeline_errors(options, message):
    with pytest.raises(PipelineError, match=message):
        PassManager.from_pipeline(f"prune-channels{{{options}}}")


@pytest.mark.parametrize(("width", "ratio", "kept"), [(64, 0.3, 44), (64, 0.2, 51), (45, 0.5, 22), (16, 0.375, 10)])
def test_kept_counts_follow_torch_pruning(width, ratio, kept):
    """Kept = int(C * (1 - ratio)), Torch-Pruning's rounding, so pruned shapes agree with it."""
    model, _, _ = prune(conv_chain((width, width)), f"ratio={ratio}", check=False)
    assert (_kept(model, "conv1"), _kept(model, "conv2")) == (kept, kept)

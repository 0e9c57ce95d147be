"""The recorded pruning plan, replaying it, the validity of the result, and the importance scorers."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from onnxpress.passes import PassManager
from onnxpress.passes.pruning import ChannelDependencyAnalysis, PruningPlan, replay_plan, score_classes
from tests.passes.pruning._models import (
    Builder,
    arrays,
    conv_chain,
    encoder_layer,
    mobilenet_block,
    prune,
    resnet_block,
    zero,
)
from tests.util import assert_same_outputs, random_feeds, run


def _flatten_split_model() -> ir.Model:
    """Conv -> Split (sizes rewritten) -> one piece through Reshape (target rewritten) -> MatMul."""
    b = Builder()
    x = b.input("x", [1, 3, 4, 4])
    h = b.op("Relu", [b.conv(x, b.rand(8, 3, 3, 3), b.rand(8), name="conv")])
    a, c = b.op("Split", [h, b.ints("sizes", [4, 4])], name="split", outputs=2, axis=1)
    f = b.op("Reshape", [a, b.ints("target", [1, 64])], name="flatten")
    y1 = b.op("MatMul", [f, b.init("fc.w", b.rand(64, 5))], name="fc")
    y2 = b.conv(c, b.rand(2, 4, 1, 1), name="side")
    return b.model([y1, y2])


MODELS = {"resnet": resnet_block, "mobilenet": lambda: mobilenet_block(2), "flatten_split": _flatten_split_model,
          "encoder": encoder_layer}


def test_plan_lists_removed_indices_per_tensor():
    model, result, pass_ = prune(resnet_block(zero_res=(1, 5), zero_inner=(2, 6)))
    recorded = model.meta["onnxpress.pruning_plan"]
    assert recorded == pass_.plan.to_dict()
    assert recorded["tensors"] == {
        "stem.w": {"0": [1, 5]}, "stem.b": {"0": [1, 5]},
        "conv1.w": {"0": [2, 6], "1": [1, 5]},
        "bn1.scale": {"0": [2, 6]}, "bn1.bias": {"0": [2, 6]}, "bn1.mean": {"0": [2, 6]}, "bn1.var": {"0": [2, 6]},
        "conv2.w": {"0": [1, 5], "1": [2, 6]},
        "bn2.scale": {"0": [1, 5]}, "bn2.bias": {"0": [1, 5]}, "bn2.mean": {"0": [1, 5]}, "bn2.var": {"0": [1, 5]},
        "head.w": {"1": [1, 5]},
    }
    assert {layer["name"]: layer["channels_after"] for layer in recorded["layers"]} == {"stem": 6, "conv1": 6, "conv2": 6}
    assert PruningPlan.from_dict(json.loads(json.dumps(recorded))).to_dict() == recorded


@pytest.mark.parametrize("name", sorted(MODELS))
def test_replay_on_a_fresh_copy_gives_the_same_model(name):
    options = "ratio=0.5 lossy-norms=true" if name == "encoder" else "ratio=0.5"
    pruned, result, pass_ = prune(MODELS[name](), options, check="runs")
    assert result.modified
    plan = json.loads(json.dumps(pruned.meta["onnxpress.pruning_plan"]))
    fresh = MODELS[name]()
    PassManager.from_pipeline("infer-shapes")(fresh)
    replayed = replay_plan(fresh, plan)
    assert replayed.tensors == pass_.plan.tensors
    a, b = arrays(pruned), arrays(fresh)
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    for node_a, node_b in zip(pruned.graph, fresh.graph):
        assert {k: v.value for k, v in node_a.attributes.items()} == {k: v.value for k, v in node_b.attributes.items()}
    onnx.checker.check_model(ir.serde.serialize_model(fresh), full_check=True)
    assert_same_outputs(pruned, fresh, random_feeds(pruned), rtol=0, atol=0)


def test_replay_refuses_a_plan_that_does_not_fit():
    pruned, _, pass_ = prune(conv_chain((16, 16)), "ratio=0.5", check=False)
    plan = pass_.plan.to_dict()
    other = conv_chain((16, 16))
    # conv1 is now tied to the graph input through an output: frozen, so the plan cannot apply
    other.graph.outputs.append(next(n for n in other.graph if n.name == "conv1").outputs[0])
    PassManager.from_pipeline("infer-shapes")(other)
    before = arrays(other)
    with pytest.raises(ValueError, match="frozen"):
        replay_plan(other, plan)
    assert all(np.array_equal(before[k], v) for k, v in arrays(other).items())
    # a plan that removes only part of a coupled set is refused too
    partial = {"tensors": {"conv1.w": {"0": [0]}}}
    fresh = conv_chain((16, 16))
    PassManager.from_pipeline("infer-shapes")(fresh)
    with pytest.raises(ValueError, match="differ"):
        replay_plan(fresh, partial)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_result_passes_the_full_checker_and_runs(name):
    options = "ratio=0.5 lossy-norms=true round-to=2" if name == "encoder" else "ratio=0.5 round-to=2"
    model, result, _ = prune(MODELS[name](), options, check=False)
    proto = ir.serde.serialize_model(model)
    onnx.checker.check_model(proto, full_check=True)
    onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True, data_prop=True)
    outputs = run(ir.serde.deserialize_model(proto), random_feeds(model))
    assert all(np.isfinite(v).all() for out in outputs for v in out.values())


def test_lossy_norms_prune_the_residual_stream_of_the_encoder():
    model, result, pass_ = prune(encoder_layer(), "ratio=0.25 lossy-norms=true", check="runs")
    assert model.graph.initializers["ln1.g"].const_value.shape[0] == 12
    assert pass_.plan.lossy_norms


# -- importance scorers -------------------------------------------------------------------------
def _scored_model(gamma=None) -> ir.Model:
    """A Conv with 4 output channels of known norms (rows of 4 weights), optionally a BN."""
    b = Builder()
    x = b.input("x", [1, 1, 4, 4])
    w = np.array([[3, 0, 0, 0], [1, 1, 1, 1], [0.1, 0.1, 0.1, 0.1], [2, 2, 2, 2]], np.float32).reshape(4, 1, 2, 2)
    h = b.conv(x, w, name="conv", pads=[0, 0, 1, 1])
    if gamma is not None:
        h = b.bn(h, np.asarray(gamma, np.float32), np.zeros(4, np.float32), name="bn")
    y = b.conv(b.op("Relu", [h]), np.ones((1, 4, 1, 1), np.float32), name="head")  # equal columns
    model = b.model([y])
    PassManager.from_pipeline("infer-shapes")(model)
    return model


def _order(model, method, how="mean") -> list[int]:
    deps = ChannelDependencyAnalysis().compute(model, None)
    group = next(g for g in deps.groups() if any(p.name == "conv" for p in g.producers))
    block = next(bl for bl in group.blocks if bl.node is not None and bl.node.name == "conv")
    classes = [deps.find(block.start + i) for i in range(block.size)]
    scores = score_classes(deps, classes, method, how)
    return sorted(range(4), key=lambda i: scores[classes[i]])


@pytest.mark.parametrize(("method", "how", "order"), [
    # l1 of the rows: 3, 4, 0.4, 8 (+1 from the head column); l2: 3, 2, 0.2, 4 (+1)
    ("l1", "mean", [2, 0, 1, 3]), ("l1", "sum", [2, 0, 1, 3]), ("l2", "mean", [2, 1, 0, 3]),
    ("l2", "max", [2, 1, 0, 3]), ("l2", "sum", [2, 1, 0, 3])])
def test_weight_scorers_order_channels(method, how, order):
    assert _order(_scored_model(), method, how) == order


def test_bn_scale_orders_by_abs_gamma():
    assert _order(_scored_model(gamma=[0.5, -2.0, 0.1, 1.0]), "bn-scale") == [2, 0, 3, 1]
    assert _order(_scored_model(), "bn-scale") == [2, 1, 0, 3]  # no BN: falls back to l2


def test_lowest_scores_are_pruned_first():
    model, result, pass_ = prune(_scored_model(gamma=[0.5, -2.0, 0.1, 1.0]), "ratio=0.5 importance=bn-scale",
                                 check="runs")
    assert pass_.plan.tensors["conv.w"] == {0: [0, 2]}
    model, result, pass_ = prune(_scored_model(), "ratio=0.5 importance=l1", check="runs")
    assert pass_.plan.tensors["conv.w"] == {0: [0, 2]}
    model, result, pass_ = prune(_scored_model(), "ratio=0.5 importance=l2", check="runs")
    assert pass_.plan.tensors["conv.w"] == {0: [1, 2]}


def test_unknown_scorer_is_a_clear_error():
    deps = ChannelDependencyAnalysis().compute(_scored_model(), None)
    with pytest.raises(ValueError, match="unknown importance"):
        score_classes(deps, [], "magic")
    with pytest.raises(ValueError, match="unknown aggregation"):
        score_classes(deps, [], "l2", "median")


def test_bn_scale_prunes_a_zero_gamma_channel():
    gamma = zero(np.linspace(1, 2, 4).astype(np.float32), 0, [1])
    model, _, pass_ = prune(_scored_model(gamma=gamma), "ratio=0.25 importance=bn-scale")
    assert pass_.plan.tensors["conv.w"] == {0: [1]}

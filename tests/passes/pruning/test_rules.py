"""Exactness of the per-op channel rules: channels whose every slice is zero are removed and the
outputs stay the same on ORT; what a rule cannot reason about is left untouched."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

from onnxpress.passes.pruning import ChannelDependencyAnalysis
from tests.passes.pruning._models import (
    Builder,
    assert_untouched,
    encoder_layer,
    mobilenet_block,
    prune,
    resnet_block,
    shapes,
    zero,
)


def _node(model: ir.Model, name: str) -> ir.Node:
    return next(n for n in model.graph if n.name == name)


def _ints(model: ir.Model, value: ir.Value) -> list[int]:
    return value.const_value.numpy().reshape(-1).tolist()


def _groups(model: ir.Model, **kwargs):
    from onnxpress.passes import PassManager

    PassManager.from_pipeline("infer-shapes")(model)
    return ChannelDependencyAnalysis(**kwargs).compute(model, None).groups()


# -- the propagation rules, one model each --------------------------------------------------------
def test_resnet_basic_block_residual_add_ties_groups():
    model, result, pass_ = prune(resnet_block(zero_res=(1, 5), zero_inner=(2, 6)))
    assert result.modified
    s = shapes(model)
    assert s["stem.w"] == [6, 3, 3, 3] and s["stem.b"] == [6]
    assert s["conv1.w"] == [6, 6, 3, 3] and s["conv2.w"] == [6, 6, 3, 3]
    assert s["bn1.scale"] == s["bn2.var"] == [6]
    assert s["head.w"] == [4, 6, 1, 1] and s["head.b"] == [4]
    tensors = pass_.plan.tensors
    assert tensors["stem.w"] == {0: [1, 5]} and tensors["conv2.w"] == {0: [1, 5], 1: [2, 6]}


def test_densenet_block_concat_offsets():
    b = Builder()
    x = b.input("x", [1, 3, 8, 8])
    stem_zero, c1_zero, c2_zero = [0, 3], [2], [1]
    a = b.op("Relu", [b.conv(x, zero(b.rand(8, 3, 3, 3), 0, stem_zero), zero(b.rand(8), 0, stem_zero), name="stem")])
    w1 = zero(zero(b.rand(4, 8, 3, 3), 1, stem_zero), 0, c1_zero)
    c1 = b.op("Relu", [b.conv(a, w1, zero(b.rand(4), 0, c1_zero), name="conv1")])
    cat1 = b.op("Concat", [a, c1], name="cat1", axis=1)
    w2 = zero(zero(zero(b.rand(4, 12, 3, 3), 1, stem_zero), 1, [8 + i for i in c1_zero]), 0, c2_zero)
    c2 = b.op("Relu", [b.conv(cat1, w2, zero(b.rand(4), 0, c2_zero), name="conv2")])
    cat2 = b.op("Concat", [cat1, c2], name="cat2", axis=1)
    wt = zero(b.rand(6, 16, 1, 1), 1, stem_zero + [8 + i for i in c1_zero] + [12 + i for i in c2_zero])
    y = b.conv(cat2, wt, name="transition")
    model, result, pass_ = prune(b.model([y]))
    s = shapes(model)
    assert s["stem.w"] == [6, 3, 3, 3] and s["conv1.w"] == [3, 6, 3, 3]
    assert s["conv2.w"] == [3, 9, 3, 3] and s["transition.w"] == [6, 12, 1, 1]
    assert pass_.plan.tensors["transition.w"] == {1: [0, 3, 10, 13]}


@pytest.mark.parametrize("multiplier", [1, 2])
def test_mobilenet_block_depthwise_group_rewritten(multiplier):
    model, result, _ = prune(mobilenet_block(multiplier, zero_in=(1, 4), zero_pw=(3,)), "ratio=0.15")
    s = shapes(model)
    assert s["stem.w"] == [6, 3, 3, 3]
    assert s["dw.w"] == [6 * multiplier, 1, 3, 3] and s["dw.b"] == [6 * multiplier]
    assert s["pw.w"] == [5, 6 * multiplier, 1, 1] and s["head.w"] == [4, 5, 1, 1]
    assert _node(model, "dw").attributes["group"].value == 6


def test_grouped_conv_is_frozen():
    b = Builder()
    x = b.input("x", [1, 3, 8, 8])
    h = b.op("Relu", [b.conv(x, zero(b.rand(8, 3, 3, 3), 0, [0, 1]), name="stem")])
    h = b.op("Relu", [b.conv(h, b.rand(8, 4, 3, 3), name="grouped", group=2)])
    y = b.conv(h, b.rand(4, 8, 1, 1), name="head")
    model = b.model([y])
    original = model.clone()
    model, result, _ = prune(model, "ratio=0.5")
    assert not result.modified
    assert_untouched(original, model)
    reasons = [r for g in _groups(original) for r in g.frozen_reasons]
    assert any("grouped Conv" in r for r in reasons)


def test_flatten_to_gemm_head():
    b = Builder()
    x = b.input("x", [1, 3, 4, 4])
    keep_zero = [2, 7]
    h = b.op("Relu", [b.conv(x, zero(b.rand(8, 3, 3, 3), 0, keep_zero), zero(b.rand(8), 0, keep_zero), name="conv")])
    h = b.op("MaxPool", [h], kernel_shape=[2, 2], strides=[2, 2])  # [1, 8, 2, 2]
    f = b.op("Flatten", [h], name="flatten")  # [1, 32]: channel c -> features 4c .. 4c+3
    cols = [4 * c + k for c in keep_zero for k in range(4)]
    y = b.op("Gemm", [f, b.init("fc.w", zero(b.rand(5, 32), 1, cols)), b.init("fc.b", b.rand(5))], name="fc", transB=1)
    model, _, pass_ = prune(b.model([y]))
    assert shapes(model)["conv.w"] == [6, 3, 3, 3]
    assert shapes(model)["fc.w"] == [5, 24] and shapes(model)["fc.b"] == [5]
    assert pass_.plan.tensors["fc.w"] == {1: cols}


@pytest.mark.parametrize("target", [[1, 128], [-1, 128], [0, -1]])
def test_reshape_flatten_to_matmul_rewrites_target(target):
    b = Builder()
    x = b.input("x", [1, 3, 4, 4])
    zeros = [0, 5]
    h = b.op("Relu", [b.conv(x, zero(b.rand(8, 3, 3, 3), 0, zeros), zero(b.rand(8), 0, zeros), name="conv")])
    f = b.op("Reshape", [h, b.ints("target", target)], name="flatten")  # [1, 128]
    rows = [16 * c + k for c in zeros for k in range(16)]
    y = b.op("Add", [b.op("MatMul", [f, b.init("fc.w", zero(b.rand(128, 5), 0, rows))], name="fc"),
                     b.init("fc.b", b.rand(5))])
    model, _, _ = prune(b.model([y]))
    assert shapes(model)["fc.w"] == [96, 5]
    reshape = _node(model, "flatten")
    expected = [target[0], 96 if target[1] > 0 else target[1]]
    assert _ints(model, reshape.inputs[1]) == expected
    if expected != target:
        assert "target" not in model.graph.initializers  # the old target is not left behind


def test_transformer_encoder_prunes_ffn_only():
    model, result, pass_ = prune(encoder_layer())
    s = shapes(model)
    assert s["ffn1.w"] == [16, 24] and s["ffn1.b"] == [24] and s["ffn2.w"] == [24, 16]
    for name in ("q.w", "k.w", "v.w", "o.w", "embed.w", "ln1.g", "ln2.g", "head.w"):
        assert s[name] == _encoder_shapes()[name], name
    assert set(pass_.plan.tensors) == {"ffn1.w", "ffn1.b", "ffn2.w"}


def _encoder_shapes():
    return shapes(encoder_layer())


def test_transformer_encoder_freezes_attention_and_residual_stream():
    groups = _groups(encoder_layer())
    reasons = {r for g in groups for r in g.frozen_reasons}
    assert any("LayerNormalization" in r and "lossy" in r for r in reasons)
    assert any("splits or regroups" in r for r in reasons)  # Q/K/V head reshapes
    prunable = [g for g in groups if g.prunable]
    assert [sorted(p.name for p in g.producers) for g in prunable] == [["ffn1"]]


@pytest.mark.parametrize("opset", [11, 17, 18])
def test_split_sizes_rewritten(opset):
    b = Builder(opset=opset)
    x = b.input("x", [1, 3, 8, 8])
    zeros = [1, 6]  # one in each piece
    h = b.op("Relu", [b.conv(x, zero(b.rand(8, 3, 3, 3), 0, zeros), zero(b.rand(8), 0, zeros), name="conv")])
    if opset == 11:
        parts = b.op("Split", [h], name="split", outputs=2, axis=1, split=[3, 5])
    elif opset == 17:
        parts = b.op("Split", [h, b.ints("sizes", [3, 5])], name="split", outputs=2, axis=1)
    else:
        zeros = [1, 5]
        parts = b.op("Split", [h], name="split", outputs=2, axis=1, num_outputs=2)
    first = 3 if opset != 18 else 4
    wa = zero(b.rand(4, first, 1, 1), 1, [zeros[0]])
    wb = zero(b.rand(4, 8 - first, 1, 1), 1, [zeros[1] - first])
    y = b.op("Add", [b.conv(parts[0], wa, name="conv_a"), b.conv(parts[1], wb, name="conv_b")])
    model = b.model([y])
    # conv's zeroed channels must be the ones removed: rebuild conv weights with the right zeros
    model, _, _ = prune(model)
    split = _node(model, "split")
    sizes = split.attributes["split"].value if opset == 11 else _ints(model, split.inputs[1])
    assert list(sizes) == [first - 1, 8 - first - 1]
    assert "num_outputs" not in split.attributes


def test_pass_through_ops():
    """Pooling, Pad, Resize, Transpose, Unsqueeze, Squeeze pass the channels through unchanged."""
    b = Builder(opset=13)
    x = b.input("x", [1, 3, 8, 8])
    zeros = [0, 5]
    h = b.op("Relu", [b.conv(x, zero(b.rand(8, 3, 3, 3), 0, zeros), zero(b.rand(8), 0, zeros), name="conv")])
    h = b.op("MaxPool", [h], kernel_shape=[2, 2], strides=[2, 2])  # [1, 8, 4, 4]
    h = b.op("Pad", [h, b.ints("pads", [0, 0, 1, 1, 0, 0, 1, 1]), b.init("pad_value", np.float32(0.5))])
    h = b.op("Resize", [h, b.init("roi", np.zeros(0, np.float32)),
                        b.init("scales", np.array([1, 1, 2, 2], np.float32))], mode="nearest")  # [1, 8, 12, 12]
    h = b.op("AveragePool", [h], kernel_shape=[2, 2], strides=[2, 2])  # [1, 8, 6, 6]
    g = b.op("GlobalAveragePool", [h])  # [1, 8, 1, 1]
    g = b.op("Squeeze", [g, b.ints("sq_axes", [2, 3])])  # [1, 8]
    h = b.op("Transpose", [h], perm=[0, 2, 3, 1])  # [1, 6, 6, 8]
    h = b.op("Unsqueeze", [h, b.ints("axes0", [0])])  # [1, 1, 6, 6, 8]
    h = b.op("Squeeze", [h, b.ints("axes0b", [0])])  # [1, 6, 6, 8]
    y1 = b.op("MatMul", [h, b.init("fc1.w", zero(b.rand(8, 5), 0, zeros))], name="fc1")
    y2 = b.op("Gemm", [g, b.init("fc2.w", zero(b.rand(8, 3), 0, zeros))], name="fc2")
    model, result, _ = prune(b.model([y1, y2]))
    assert shapes(model)["conv.w"] == [6, 3, 3, 3]
    assert shapes(model)["fc1.w"] == [6, 5] and shapes(model)["fc2.w"] == [6, 3]


def _if_model(capture_weight: bool = False) -> ir.Model:
    """A Conv whose output (or weight) is read inside an If branch."""
    from onnx import TensorProto, helper

    b = Builder()
    x = b.input("x", [1, 3, 8, 8])
    cond = b.input("cond", [], TensorProto.BOOL)
    h = b.op("Relu", [b.conv(x, zero(b.rand(8, 3, 3, 3), 0, [0, 1]), name="conv")])
    captured = "conv.w" if capture_weight else h
    then_out = helper.make_tensor_value_info("t_out", TensorProto.FLOAT, None)
    else_out = helper.make_tensor_value_info("e_out", TensorProto.FLOAT, None)
    then_g = helper.make_graph([helper.make_node("Relu", [captured], ["t_out"])], "then", [], [then_out])
    else_g = helper.make_graph([helper.make_node("Sigmoid", [captured], ["e_out"])], "else", [], [else_out])
    branch = b.op("If", [cond], name="if", then_branch=then_g, else_branch=else_g)
    inner = b.conv(h, zero(b.rand(8, 8, 1, 1), 1, [0, 1]), name="conv2")
    y = b.op("Add", [b.op("ReduceMean", [branch], keepdims=0), b.op("ReduceMean", [inner], keepdims=0)])
    return b.model([y])


@pytest.mark.parametrize("capture_weight", [False, True])
def test_if_subgraph_capture_freezes(capture_weight):
    model = _if_model(capture_weight)
    original = model.clone()
    model, result, _ = prune(model, "ratio=0.25")
    assert shapes(model)["conv.w"] == shapes(original)["conv.w"]


def test_unknown_custom_op_is_frozen():
    b = Builder()
    x = b.input("x", [1, 3, 8, 8])
    h = b.op("Relu", [b.conv(x, zero(b.rand(8, 3, 3, 3), 0, [0, 1]), name="conv1")])
    h = b.op("Relu", [b.conv(h, zero(b.rand(8, 8, 3, 3), 1, [0, 1]), name="conv2")])
    y = b.op("MyOp", [h], name="custom", domain="com.example")
    model = b.model([y])
    model, result, _ = prune(model, check=False)
    s = shapes(model)
    assert s["conv1.w"] == [6, 3, 3, 3] and s["conv2.w"] == [8, 6, 3, 3]  # conv2's output is frozen


def test_graph_outputs_untouched():
    b = Builder()
    x = b.input("x", [1, 3, 8, 8])
    h = b.op("Relu", [b.conv(x, zero(b.rand(8, 3, 3, 3), 0, [0, 1]), name="conv")])
    y = b.conv(h, zero(b.rand(4, 8, 1, 1), 1, [0, 1]), name="head")
    model = b.model([h, y])  # the intermediate activation is an output too
    original = model.clone()
    model, result, _ = prune(model)
    assert not result.modified
    assert_untouched(original, model)


def _shared_weight_model(first_reads_graph_input: bool) -> ir.Model:
    b = Builder()
    x = b.input("x", [1, 8, 8, 8])
    z = [2, 5]
    w = zero(zero(b.rand(8, 8, 3, 3), 0, z), 1, z)
    shared = b.init("shared.w", w)
    if first_reads_graph_input:
        a = b.op("Relu", [b.op("Conv", [x, shared], name="conv_a", pads=[1, 1, 1, 1])])
    else:
        stem = b.op("Relu", [b.conv(x, zero(b.rand(8, 8, 3, 3), 0, z), zero(b.rand(8), 0, z), name="stem")])
        a = b.op("Relu", [b.op("Conv", [stem, shared], name="conv_a", pads=[1, 1, 1, 1])])
    c = b.op("Relu", [b.op("Conv", [a, shared], name="conv_b", pads=[1, 1, 1, 1])])
    y = b.conv(c, zero(b.rand(4, 8, 1, 1), 1, z), name="head")
    return b.model([y])


def test_shared_weight_pruned_consistently():
    model, result, _ = prune(_shared_weight_model(False))
    s = shapes(model)
    assert s["shared.w"] == [6, 6, 3, 3] and s["stem.w"] == [6, 8, 3, 3] and s["head.w"] == [4, 6, 1, 1]


def test_shared_weight_read_by_unpruned_input_keeps_that_axis():
    # conv_a reads the graph input: the weight's input axis must not shrink
    model, result, _ = prune(_shared_weight_model(True))
    assert shapes(model)["shared.w"][1] == 8


def _shape_model(index: int) -> ir.Model:
    b = Builder()
    x = b.input("x", ["N", 3, 8, 8])
    z = [3, 4]
    h = b.op("Relu", [b.conv(x, zero(b.rand(8, 3, 3, 3), 0, z), zero(b.rand(8), 0, z), name="conv")])
    g = b.op("Flatten", [b.op("GlobalAveragePool", [h])])
    g = b.op("Gemm", [g, b.init("fc.w", zero(b.rand(8, 5), 0, z))], name="fc")
    dim = b.op("Gather", [b.op("Shape", [h], name="shape"), b.ints("index", [index])], name="dim")
    if index == 0:  # the batch size builds a [N, 5] tensor of ones
        ones = b.op("ConstantOfShape", [b.op("Concat", [dim, b.ints("five", [5])], axis=0)],
                    value=__import__("onnx").helper.make_tensor("one", 1, [1], [1.0]))
        y = b.op("Add", [g, ones])
    else:  # the channel count is used as a number
        y = b.op("Div", [g, b.op("Cast", [dim], to=1)])
    return b.model([y])


def test_shape_gather_of_batch_dim_is_still_prunable():
    model, result, _ = prune(_shape_model(0))
    assert shapes(model)["conv.w"] == [6, 3, 3, 3]


def test_shape_gather_of_channel_dim_freezes():
    model = _shape_model(1)
    original = model.clone()
    model, result, _ = prune(model)
    assert not result.modified
    assert_untouched(original, model)


# -- rules added for Slice, Resize sizes, GroupNormalization, Shape(start/end) --------------------------
@pytest.mark.parametrize("opset", [9, 17])
def test_slice_of_channel_range_rewrites_starts_and_ends(opset):
    b = Builder(opset=opset)
    x = b.input("x", [1, 3, 8, 8])
    zeros = [1, 4]  # channel 1 is outside the slice, 4 inside [2, 7)
    h = b.op("Relu", [b.conv(x, zero(b.rand(8, 3, 3, 3), 0, zeros), zero(b.rand(8), 0, zeros), name="conv")])
    if opset < 10:
        part = b.op("Slice", [h], name="slice", starts=[2], ends=[-1], axes=[1])
    else:
        part = b.op("Slice", [h, b.ints("starts", [0, 2]), b.ints("ends", [1 << 40, -1]), b.ints("axes", [2, 1])],
                    name="slice")
    y = b.conv(part, zero(b.rand(4, 5, 1, 1), 1, [2]), name="head")  # channel 4 is position 2 of the slice
    y = b.op("Add", [y, b.conv(h, zero(b.rand(4, 8, 1, 1), 1, zeros), name="side")])
    model, result, _ = prune(b.model([y]))
    assert shapes(model)["conv.w"] == [6, 3, 3, 3] and shapes(model)["head.w"] == [4, 4, 1, 1]
    node = _node(model, "slice")
    if opset < 10:
        assert list(node.attributes["starts"].value) == [1] and list(node.attributes["ends"].value) == [5]
    else:
        assert _ints(model, node.inputs[1]) == [0, 1] and _ints(model, node.inputs[2]) == [1 << 40, 5]


def test_slice_with_step_on_channels_is_frozen():
    b = Builder()
    x = b.input("x", [1, 3, 8, 8])
    h = b.op("Relu", [b.conv(x, zero(b.rand(8, 3, 3, 3), 0, [0, 2]), name="conv")])
    part = b.op("Slice", [h, b.ints("s", [0]), b.ints("e", [8]), b.ints("a", [1]), b.ints("st", [2])])
    y = b.conv(part, b.rand(4, 4, 1, 1), name="head")
    model = b.model([y])
    original = model.clone()
    model, result, _ = prune(model)
    assert_untouched(original, model)


def test_resize_with_sizes_rewrites_the_channel_size():
    b = Builder(opset=13)
    x = b.input("x", [1, 3, 4, 4])
    zeros = [0, 7]
    h = b.op("Relu", [b.conv(x, zero(b.rand(8, 3, 3, 3), 0, zeros), zero(b.rand(8), 0, zeros), name="conv")])
    h = b.op("Resize", [h, "", "", b.ints("sizes", [1, 8, 8, 8])], name="resize", mode="nearest")
    y = b.conv(h, zero(b.rand(4, 8, 1, 1), 1, zeros), name="head")
    model, result, _ = prune(b.model([y]))
    assert shapes(model)["head.w"] == [4, 6, 1, 1]
    assert _ints(model, _node(model, "resize").inputs[3]) == [1, 6, 8, 8]


@pytest.mark.parametrize("groups", [8, 4])
def test_group_normalization(groups):
    b = Builder(opset=21)
    x = b.input("x", [1, 3, 4, 4])
    zeros = [0, 1]
    h = b.conv(x, zero(b.rand(8, 3, 3, 3), 0, zeros), zero(b.rand(8), 0, zeros), name="conv")
    h = b.op("GroupNormalization", [h, b.init("gn.scale", zero(b.rand(8), 0, zeros)),
                                    b.init("gn.bias", zero(b.rand(8), 0, zeros))], name="gn", num_groups=groups)
    b.typed(h, [1, 8, 4, 4])
    y = b.conv(b.op("Relu", [h]), zero(b.rand(4, 8, 1, 1), 1, zeros), name="head")
    model = b.model([y])
    original = model.clone()
    model, result, _ = prune(model)
    if groups == 8:  # one channel per group: an InstanceNormalization
        assert shapes(model)["gn.scale"] == [6] and _node(model, "gn").attributes["num_groups"].value == 6
    else:
        assert_untouched(original, model)


@pytest.mark.parametrize(("attrs", "index", "frozen"), [
    ({"start": 0, "end": 1}, None, False), ({"start": 0, "end": -2}, None, True), ({"start": 2}, None, False),
    ({"start": -3}, None, True), ({"end": 2}, -1, True), ({"end": 3}, -2, True), ({"start": 1}, 1, False)])
def test_shape_start_end_decide_whether_the_channel_dim_is_read(attrs, index, frozen):
    b = Builder()
    x = b.input("x", [1, 3, 8, 8])
    h = b.op("Relu", [b.conv(x, zero(b.rand(8, 3, 3, 3), 0, [0, 1]), name="conv")])
    dims = b.op("Shape", [h], **attrs)
    if index is not None:
        dims = b.op("Gather", [dims, b.ints("index", [index])])
    dims = b.op("Cast", [b.op("ReduceSum", [dims], keepdims=1)], to=1)
    y = b.op("Add", [b.conv(h, zero(b.rand(4, 8, 1, 1), 1, [0, 1]), name="head"), dims])
    model, result, _ = prune(b.model([y]))
    assert (shapes(model)["conv.w"][0] == 8) == frozen


@pytest.mark.parametrize(("starts", "ends", "steps", "frozen"), [
    ([0], [1], [1], False), ([2], [4], [1], False), ([-1], [-1000], [-1], True), ([0], [4], [2], True),
    ([1], [2], [1], True)])
def test_shape_then_slice(starts, ends, steps, frozen):
    b = Builder()
    x = b.input("x", [1, 3, 8, 8])
    h = b.op("Relu", [b.conv(x, zero(b.rand(8, 3, 3, 3), 0, [0, 1]), name="conv")])
    picked = b.op("Slice", [b.op("Shape", [h]), b.ints("s", starts), b.ints("e", ends), b.ints("a", [0]),
                            b.ints("st", steps)])
    dims = b.op("Cast", [b.op("ReduceSum", [picked], keepdims=1)], to=1)
    y = b.op("Add", [b.conv(h, zero(b.rand(4, 8, 1, 1), 1, [0, 1]), name="head"), dims])
    model, result, _ = prune(b.model([y]))
    assert (shapes(model)["conv.w"][0] == 8) == frozen


def test_tracked_value_used_as_a_parameter_is_frozen():
    """A Conv output used as another layer's dynamic bias / BN scale must keep its channels."""
    b = Builder()
    x = b.input("x", [1, 3, 4, 4])
    h = b.conv(x, zero(b.rand(8, 3, 3, 3), 0, [0, 1]), name="conv")
    dyn = b.op("ReduceMean", [b.op("Flatten", [b.conv(x, zero(b.rand(4, 3, 4, 4), 0, [0]), name="vec",
                                                        pads=[0, 0, 0, 0])], axis=0)], axes=[0], keepdims=0)
    g = b.op("Gemm", [b.op("Flatten", [b.op("GlobalAveragePool", [h])]), b.init("fc.w", b.rand(8, 4)), dyn],
             name="fc")
    model = b.model([g])
    original = model.clone()
    model, result, _ = prune(model)
    assert shapes(model)["vec.w"] == shapes(original)["vec.w"]
    assert shapes(model)["conv.w"] == [6, 3, 3, 3]

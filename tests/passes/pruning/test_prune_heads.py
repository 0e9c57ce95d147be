"""prune-heads: attention blocks are found strictly, heads go as units, outputs stay exact when the
removed heads contribute nothing."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper

from onnxpress.passes import PassManager, PassRecord
from onnxpress.passes.pruning.attention import find_attention_blocks
from onnxpress.passes.pruning.prune_heads import PLAN_KEY, PruneHeadsPass, select_heads
from tests.util import run

D, H, DH = 32, 4, 8


def encoder_layer(*, zero_head: int | None = 2, zero_v_bias: bool = True, split: list[int] = (0, 0, H, DH),
                  merge: list[int] = (0, 0, D), k_perms: list[tuple[int, ...]] = ((0, 2, 3, 1),), scale: str = "Div",
                  mask_heads: int = 1, q_also_output: bool = False, extra_score_op: str | None = None,
                  seed: int = 0) -> ir.Model:
    """x[B,S,D], mask[B,mask_heads,1,S] -> BERT-style self-attention -> + x -> LayerNorm -> y.

    `zero_head` gets zero Wv columns and Wo rows (and V bias entries with `zero_v_bias`): whatever
    Q and K do, it adds nothing (or a constant, when only its V bias is left) to the output."""
    rng = np.random.default_rng(seed)
    w = {name: rng.standard_normal(shape).astype(np.float32) * 0.3
         for name, shape in [("wq", (D, D)), ("wk", (D, D)), ("wv", (D, D)), ("wo", (D, D)),
                             ("bq", (D,)), ("bk", (D,)), ("bv", (D,)), ("bo", (D,)), ("gamma", (D,)), ("beta", (D,))]}
    if zero_head is not None:
        cols = slice(zero_head * DH, (zero_head + 1) * DH)
        w["wv"][:, cols] = 0
        w["wo"][cols, :] = 0
        if zero_v_bias:
            w["bv"][cols] = 0
    inits = [helper.make_tensor(k, TensorProto.FLOAT, v.shape, v.reshape(-1).tolist()) for k, v in w.items()]
    inits += [helper.make_tensor("split_shape", TensorProto.INT64, [4], list(split)),
              helper.make_tensor("merge_shape", TensorProto.INT64, [len(merge)], list(merge)),
              helper.make_tensor("scale", TensorProto.FLOAT, [], [float(np.sqrt(DH)) if scale == "Div" else 1 / np.sqrt(DH)])]
    nodes = []
    for p in "qkv":
        nodes += [helper.make_node("MatMul", ["x", f"w{p}"], [f"{p}_mm"], name=f"attn/{p}/MatMul"),
                  helper.make_node("Add", [f"b{p}", f"{p}_mm"], [f"{p}_add"], name=f"attn/{p}/Add"),
                  helper.make_node("Reshape", [f"{p}_add", "split_shape"], [f"{p}_heads"], name=f"attn/{p}/Reshape")]
    nodes.append(helper.make_node("Transpose", ["q_heads"], ["q_t"], perm=[0, 2, 1, 3], name="attn/q/Transpose"))
    nodes.append(helper.make_node("Transpose", ["v_heads"], ["v_t"], perm=[0, 2, 1, 3], name="attn/v/Transpose"))
    k_in = "k_heads"
    for i, perm in enumerate(k_perms):
        nodes.append(helper.make_node("Transpose", [k_in], [f"k_t{i}"], perm=list(perm), name=f"attn/k/Transpose{i}"))
        k_in = f"k_t{i}"
    nodes += [helper.make_node("MatMul", ["q_t", k_in], ["scores"], name="attn/QK"),
              helper.make_node(scale, ["scores", "scale"], ["scaled"], name="attn/scale")]
    probs_in = "masked"
    nodes.append(helper.make_node("Add", ["scaled", "mask"], ["masked"], name="attn/mask"))
    if extra_score_op:
        nodes.append(helper.make_node(extra_score_op, ["masked"], ["extra"], name="attn/extra"))
        probs_in = "extra"
    nodes += [helper.make_node("Softmax", [probs_in], ["probs"], axis=-1, name="attn/Softmax"),
              helper.make_node("MatMul", ["probs", "v_t"], ["ctx"], name="attn/PV"),
              helper.make_node("Transpose", ["ctx"], ["ctx_t"], perm=[0, 2, 1, 3], name="attn/ctx/Transpose"),
              helper.make_node("Reshape", ["ctx_t", "merge_shape"], ["merged"], name="attn/merge"),
              helper.make_node("MatMul", ["merged", "wo"], ["o_mm"], name="attn/out/MatMul"),
              helper.make_node("Add", ["o_mm", "bo"], ["o"], name="attn/out/Add"),
              helper.make_node("Add", ["o", "x"], ["res"], name="res"),
              helper.make_node("LayerNormalization", ["res", "gamma", "beta"], ["y"], axis=-1, name="ln")]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", "S", D])]
    if q_also_output:
        outputs.append(helper.make_tensor_value_info("q_t", TensorProto.FLOAT, None))
    graph = helper.make_graph(
        nodes, "encoder_layer",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "S", D]),
         helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["B", mask_heads, 1, "S"])],
        outputs, inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto = onnx.shape_inference.infer_shapes(proto)
    onnx.checker.check_model(proto)
    return ir.serde.deserialize_model(proto)


def feeds(seq: int, batch: int = 2, mask_heads: int = 1, seed: int = 1) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    mask = np.where(rng.random((batch, mask_heads, 1, seq)) < 0.2, -1e4, 0.0).astype(np.float32)
    return [{"x": rng.standard_normal((batch, seq, D)).astype(np.float32), "mask": mask}]


def prune(model: ir.Model, options: str = "ratio=0.25") -> tuple[ir.Model, PassRecord]:
    """Run prune-heads through the manager (pipeline text and registry included); the pass's record."""
    pm = PassManager.from_pipeline(f"prune-heads{{{options}}}")
    pm(model)
    (result,) = pm.records
    proto = ir.serde.serialize_model(model)
    onnx.checker.check_model(proto, full_check=True)
    return ir.serde.deserialize_model(proto), result


def assert_same(before: ir.Model, after: ir.Model, seqs=(5, 9), mask_heads: int = 1) -> None:
    for seq in seqs:
        f = feeds(seq, mask_heads=mask_heads)
        np.testing.assert_allclose(run(after, f)[0]["y"], run(before, f)[0]["y"], rtol=1e-5, atol=1e-5)


def initializer(model: ir.Model, name: str) -> np.ndarray:
    return model.graph.initializers[name].const_value.numpy()


def reshape_target(model: ir.Model, node_name: str) -> list[int]:
    node = next(n for n in model.graph if n.name == node_name)
    return node.inputs[1].const_value.numpy().tolist()


# ----------------------------------------------------------------------------------------------
def test_zero_head_is_removed_exactly_with_literal_targets_rewritten():
    original = encoder_layer()
    pruned, result = prune(encoder_layer())
    assert result.modified
    assert result.stats["heads_removed"] == 1
    assert result.stats["heads"] == {"attn": "4->3"}
    assert result.stats["params_removed"] == 4 * D * DH + 3 * DH
    for name in ("wq", "wk", "wv"):
        assert initializer(pruned, name).shape == (D, 3 * DH)
        kept = np.delete(initializer(original, name), np.s_[2 * DH:3 * DH], axis=1)
        np.testing.assert_array_equal(initializer(pruned, name), kept)
    assert initializer(pruned, "bq").shape == (3 * DH,)
    assert initializer(pruned, "wo").shape == (3 * DH, D)
    for p in "qkv":
        assert reshape_target(pruned, f"attn/{p}/Reshape") == [0, 0, 3, DH]
    assert reshape_target(pruned, "attn/merge") == [0, 0, 3 * DH]
    values = {v.name: v for n in pruned.graph for v in n.outputs}
    assert list(values["q_mm"].shape)[-1] == 3 * DH
    assert list(values["k_t0"].shape)[1:3] == [3, DH]
    assert list(values["probs"].shape)[1] == 3
    assert list(values["merged"].shape)[-1] == 3 * DH
    assert_same(original, pruned)


def test_plan_is_recorded_on_model_and_pass():
    model = encoder_layer()
    pass_ = PruneHeadsPass(ratio=0.25)
    result = pass_(model)
    assert result.modified
    (block,) = model.meta[PLAN_KEY]["blocks"]
    assert block["name"] == "attn" and block["removed"] == [2] and block["heads_after"] == 3
    assert block["tensors"]["wv"] == {1: list(range(2 * DH, 3 * DH))}
    assert pass_.plan["blocks"][0]["removed"] == [2]


def test_v_bias_of_removed_head_is_folded_into_output_bias():
    """Head 1 contributes only through its V bias (zero Wv columns, Wo rows kept): a constant
    bv_h @ Wo_h, since attention weights sum to one. Removing it moves that into the output bias."""
    def build() -> ir.Model:
        model = encoder_layer(zero_head=None)
        wv = model.graph.initializers["wv"].const_value.numpy().copy()
        wv[:, DH:2 * DH] = 0
        model.graph.initializers["wv"].const_value = ir.tensor(wv, name="wv")
        return model

    original = build()
    pruned, result = prune(build(), "ratio=0.25 importance=vo")
    assert result.stats["heads_removed"] == 1
    bv, wo = initializer(original, "bv")[DH:2 * DH], initializer(original, "wo")[DH:2 * DH]
    np.testing.assert_allclose(initializer(pruned, "bo"), initializer(original, "bo") + bv @ wo, atol=1e-6)
    assert_same(original, pruned)
    _, without = prune(build(), "ratio=0.25 importance=vo compensate-bias=false")
    assert without.stats["heads_removed"] == 1


@pytest.mark.parametrize("split,merge,k_perms,scale", [
    ((0, 0, -1, DH), (0, 0, -1), ((0, 2, 3, 1),), "Mul"),
    ((0, 0, H, -1), (-1, 0, D), ((0, 2, 1, 3), (0, 1, 3, 2)), "Div"),
])
def test_target_styles_and_k_layouts(split, merge, k_perms, scale):
    original = encoder_layer(split=split, merge=merge, k_perms=k_perms, scale=scale)
    pruned, result = prune(encoder_layer(split=split, merge=merge, k_perms=k_perms, scale=scale))
    assert result.stats["heads_removed"] == 1
    expect_split = [3 if e == H else e for e in split]
    expect_merge = [3 * DH if e == D else e for e in merge]
    assert reshape_target(pruned, "attn/q/Reshape") == expect_split
    assert reshape_target(pruned, "attn/merge") == expect_merge
    assert_same(original, pruned)


@pytest.mark.parametrize("kwargs,reason", [
    ({"q_also_output": True}, "graph output"),
    ({"extra_score_op": "Sigmoid"}, "Sigmoid"),
    ({"mask_heads": H}, "may differ per head"),
])
def test_blocks_that_do_not_match_are_left_alone(kwargs, reason):
    before = encoder_layer(**kwargs)
    after, result = prune(encoder_layer(**kwargs))
    assert not result.modified
    assert result.stats["attention_blocks"] == 0
    (why,) = result.stats["skipped"].values()
    assert reason in why
    for name, value in before.graph.initializers.items():
        np.testing.assert_array_equal(initializer(after, name), value.const_value.numpy())
    assert [n.op_type for n in after.graph] == [n.op_type for n in before.graph]


def test_ignore_and_ratio_zero_leave_the_model_alone():
    for options in ("ratio=0.25 ignore=attn/QK", "ratio=0.25 ignore=op:Softmax", "ratio=0"):
        _, result = prune(encoder_layer(), options)
        assert not result.modified, options


def test_select_heads_keeps_one_and_rounds():
    scores = np.array([5.0, 1.0, 3.0, 2.0, 4.0, 0.5, 6.0, 7.0])
    assert select_heads(scores, 0.25) == [1, 5]
    assert select_heads(scores, 0.5, round_to=4) == [1, 2, 3, 5]
    assert select_heads(scores, 0.3, round_to=4) == []  # 6 kept rounds up to 8
    assert select_heads(np.array([1.0, 2.0]), 0.99) == [0]
    assert select_heads(np.array([1.0]), 0.9) == []


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("pipeline", ["O2,prune-heads{ratio=0.25}", "infer-shapes,prune-heads{ratio=0.25}"])
def test_torch_exported_encoder_layer(pipeline):
    """After -O2 the targets are folded constants; with shapes only they are Concat(Shape(x)...)."""
    torch = pytest.importorskip("torch")
    import io

    class SelfAttention(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.query, self.key, self.value, self.out = (torch.nn.Linear(D, D) for _ in range(4))
            self.norm = torch.nn.LayerNorm(D)

        def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            b, s, _ = x.shape

            def heads(t: torch.Tensor) -> torch.Tensor:
                return t.view(b, s, H, DH).permute(0, 2, 1, 3)

            q, k, v = heads(self.query(x)), heads(self.key(x)), heads(self.value(x))
            scores = q @ k.transpose(-1, -2) / DH ** 0.5 + (1.0 - mask[:, None, None, :]) * -1e4
            ctx = (scores.softmax(-1) @ v).permute(0, 2, 1, 3).reshape(b, s, H * DH)
            return self.norm(x + self.out(ctx))

    torch.manual_seed(0)
    module = SelfAttention().eval()
    with torch.no_grad():
        module.value.weight[DH:2 * DH] = 0
        module.value.bias[DH:2 * DH] = 0
        module.out.weight[:, DH:2 * DH] = 0
    buffer = io.BytesIO()
    torch.onnx.export(module, (torch.randn(2, 5, D), torch.ones(2, 5)), buffer, dynamo=False,
                      input_names=["x", "mask"], output_names=["y"], opset_version=17,
                      dynamic_axes={"x": {0: "B", 1: "S"}, "mask": {0: "B", 1: "S"}})
    original = ir.serde.deserialize_model(onnx.load_from_string(buffer.getvalue()))
    model = ir.serde.deserialize_model(onnx.load_from_string(buffer.getvalue()))
    assert PassManager.from_pipeline(pipeline)(model).modified
    (plan,) = model.meta[PLAN_KEY]["blocks"]
    assert plan["removed"] == [1] and plan["heads_after"] == H - 1
    onnx.checker.check_model(ir.serde.serialize_model(model), full_check=True)
    rng = np.random.default_rng(0)
    for seq in (4, 11):
        f = [{"x": rng.standard_normal((2, seq, D)).astype(np.float32),
              "mask": (rng.random((2, seq)) > 0.2).astype(np.float32)}]
        np.testing.assert_allclose(run(model, f)[0]["y"], run(original, f)[0]["y"], rtol=1e-5, atol=1e-5)


def test_finder_reports_every_softmax():
    blocks, refused = find_attention_blocks(encoder_layer())
    assert [b.name for b in blocks] == ["attn"] and not refused
    (block,) = blocks
    assert (block.num_heads, block.head_dim) == (H, DH)

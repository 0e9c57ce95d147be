"""quantize-qdq: placement golden tests per op pattern, numerics on ORT within scale-derived bounds."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

from onnxpress.backends.base import get_backend
from onnxpress.errors import PipelineError
from onnxpress.passes.manager import PassContext
from onnxpress.passes.pipeline import build_pipeline
from onnxpress.passes.quantize import QuantizeQdqPass, quantize_fragment
from onnxpress.passes.quantize import quant_math as qm
from tests.util import model_from_text, random_feeds, run

RNG = np.random.default_rng(0)


# -- helpers (test_fusion imports these) ------------------------------------------------------
def rand(*shape: int, scale: float = 1.0) -> np.ndarray:
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


def _init(name: str, array: np.ndarray) -> str:
    values = ",".join(f"{x:.7g}" if array.dtype == np.float32 else str(int(x)) for x in array.ravel())
    dtype = "float" if array.dtype == np.float32 else "int64"
    return f"{dtype}[{','.join(map(str, array.shape))}] {name} = {{{values}}}"


def make(body: str, signature: str, inits: dict[str, np.ndarray], opset: int = 17) -> ir.Model:
    """A model from a node list, a signature `(float[..] x) => (float y)` and named initializers."""
    inits_text = ", ".join(_init(k, v) for k, v in inits.items())
    return model_from_text(
        f'<ir_version: 8, opset_import: ["" : {opset}]>\ng {signature} <{inits_text}> {{\n{body}\n}}'
    )


def quantize(model: ir.Model, feeds: list[dict] | None = None, n: int = 8, **options):
    """Run quantize-qdq on `model` in place under the CPU backend's context; (result, ctx, feeds).

    Placement tests pin the rules' own result: the sensitivity fallback (test_fallback.py) and the
    measured part timing (test_speed.py) are off unless a test asks for them."""
    options.setdefault("fallback", "none")
    options.setdefault("part_timing", False)
    feeds = random_feeds(model, n) if feeds is None else feeds
    backend = get_backend("cpu")
    ctx = PassContext(capabilities=backend.capabilities, runner=backend.runner(), data=feeds)
    with ctx:
        result = QuantizeQdqPass(**options)(model)
    return result, ctx, feeds


def producer_op(model: ir.Model, value: ir.Value | None) -> str | None:
    p = value.producer() if value is not None else None
    return p.op_type if p is not None else None


def nodes(model: ir.Model, op_type: str) -> list[ir.Node]:
    return [n for n in model.graph if n.op_type == op_type]


def node(model: ir.Model, name: str) -> ir.Node:
    return next(n for n in model.graph if n.name == name)


def const(value: ir.Value) -> np.ndarray:
    return value.const_value.numpy()


def scale_of(value: ir.Value) -> float:
    """The scale of the QDQ pair a DequantizeLinear output `value` comes from."""
    dq = value.producer()
    assert dq.op_type == "DequantizeLinear", dq.op_type
    return float(const(dq.inputs[1]))


def run_both(before: ir.Model, after: ir.Model, feeds: list[dict], name: str = "y"):
    return (np.stack([r[name] for r in run(before, feeds)]), np.stack([r[name] for r in run(after, feeds)]))


def ops_sequence(model: ir.Model) -> list[str]:
    return [n.op_type for n in model.graph]


def _seeded(seed: int):
    rng = np.random.default_rng(seed)
    return lambda *shape, scale=1.0: (rng.standard_normal(shape) * scale).astype(np.float32)


# -- quant_math ---------------------------------------------------------------------------------
def test_scale_zero_point_conventions():
    s, z = qm.compute_scale_zero_point(-1.0, 3.0, "uint8", symmetric=False)
    assert z.dtype == np.uint8 and z == 64 and np.isclose(s, 4.0 / 255)
    s, z = qm.compute_scale_zero_point(0.5, 3.0, "uint8", symmetric=False)  # widened to include 0
    assert z == 0 and np.isclose(s, 3.0 / 255)
    s, z = qm.compute_scale_zero_point(-2.0, 1.0, "int8", symmetric=True)
    assert z == 0 and np.isclose(s, 2.0 / 127)
    s, z = qm.compute_scale_zero_point(-2.0, 1.0, "uint8", symmetric=True)
    assert z == 128 and np.isclose(s, 2.0 / 127)
    s, z = qm.compute_scale_zero_point(0.0, 0.0, "int8", symmetric=False)
    assert s == 1.0 and z == -128
    with pytest.raises(ValueError):
        qm.compute_scale_zero_point(0.0, np.inf, "int8", symmetric=False)


@pytest.mark.parametrize("dtype,symmetric", [("uint8", False), ("int8", True), ("int16", False), ("uint16", True)])
def test_quantize_round_trip_within_half_a_step(dtype, symmetric):
    x = rand(1000, scale=3.0)
    s, z = qm.compute_scale_zero_point(x.min(), x.max(), dtype, symmetric)
    back = qm.dequantize_array(qm.quantize_array(x, s, z, dtype), s, z)
    assert np.abs(back - x).max() <= s / 2 * 1.001
    assert qm.dequantize_array(qm.quantize_array(np.zeros(3), s, z, dtype), s, z).tolist() == [0, 0, 0]


def test_per_channel_scales_per_axis():
    w = rand(4, 6) * np.array([1, 10, 100, 1000, 1, 1], dtype=np.float32)
    s, z = qm.per_channel_scales(w, 1, "int8", symmetric=True)
    assert s.shape == (6,) and np.all(z == 0)
    assert np.allclose(s, np.abs(w).max(axis=0) / 127)
    back = qm.dequantize_array(qm.quantize_array(w, s, z, "int8", axis=1), s, z, axis=1)
    assert np.all(np.abs(back - w) <= s / 2 * 1.001)


# -- options and text ---------------------------------------------------------------------------
def test_options_validate_and_round_trip():
    for bad in ({"activations": "int4"}, {"weights": "int16"}, {"calibration": "kl"}, {"bias": "int8"},
                {"percentile": 0.0}, {"exclude": ("re:(",)}, {"range_ratio": 1.0}):
        with pytest.raises(ValueError):
            QuantizeQdqPass(**bad)
    text = "quantize-qdq{activations=int8 calibration=minmax exclude=conv1,re:^head/.*,op:Softmax}"
    (p,) = build_pipeline(text)
    assert p.options.exclude == ("conv1", "re:^head/.*", "op:Softmax")
    assert p.to_text() == text
    with pytest.raises(PipelineError, match="activations"):
        build_pipeline("quantize-qdq{activations=fp8}")


def test_quantize_fragment():
    assert quantize_fragment("int8", data=True) == "quantize-qdq{activations=uint8 weights=int8 per-channel=true}"
    assert build_pipeline(quantize_fragment("int8", data=False))[0].options == QuantizeQdqPass.Options()
    assert quantize_fragment("int4", True) == "quantize-weights{bits=4 block-size=32}"
    assert quantize_fragment("fp16", False) == "convert-fp16"
    assert quantize_fragment("dynamic", False) == "quantize-dynamic"
    with pytest.raises(ValueError, match="int8"):
        quantize_fragment("int3", True)


# -- placement golden tests ---------------------------------------------------------------------
def conv_relu_model() -> ir.Model:
    """Conv -> Relu -> Conv with biases; the same weights on every call."""
    rand = _seeded(1)
    return make(
        "c1 = Conv <pads=[1,1,1,1]> (x, w1, b1)\n r1 = Relu (c1)\n y = Conv <pads=[1,1,1,1]> (r1, w2, b2)",
        "(float[1,3,8,8] x) => (float y)",
        {"w1": rand(8, 3, 3, 3, scale=0.3), "b1": rand(8, scale=0.1), "w2": rand(4, 8, 3, 3, scale=0.3),
         "b2": rand(4, scale=0.1)},
    )


def test_conv_relu_golden():
    model = conv_relu_model()
    before = model.clone()
    result, _, feeds = quantize(model, calibration="minmax")
    assert result.modified
    assert ops_sequence(model) == [
        "DequantizeLinear", "DequantizeLinear",  # weights (int8 initializers)
        "QuantizeLinear", "DequantizeLinear",  # x
        "DequantizeLinear", "Conv", "Relu",  # bias b1 (int32), conv, relu: nothing in between
        "QuantizeLinear", "DequantizeLinear",  # after the Relu
        "DequantizeLinear", "Conv", "QuantizeLinear", "DequantizeLinear",  # b2, conv 2, graph output
    ]
    conv1, conv2 = nodes(model, "Conv")
    relu = nodes(model, "Relu")[0]
    assert relu.inputs[0] is conv1.outputs[0]  # no QDQ between Conv and Relu
    assert [u.node.op_type for u in relu.outputs[0].uses()] == ["QuantizeLinear"]
    # Weights: integer initializers + DQ on axis 0; float weights gone.
    w_dq = conv1.inputs[1].producer()
    assert w_dq.attributes["axis"].as_int() == 0
    assert const(w_dq.inputs[0]).dtype == np.int8 and const(w_dq.inputs[1]).shape == (8,)
    assert not {"w1", "w2", "b1", "b2"} & set(model.graph.initializers)
    # Bias: int32, scale = s_x * s_w per channel, zero point 0.
    b_dq = conv1.inputs[2].producer()
    assert const(b_dq.inputs[0]).dtype == np.int32 and not const(b_dq.inputs[2]).any()
    np.testing.assert_allclose(const(b_dq.inputs[1]), scale_of(conv1.inputs[0]) * const(w_dq.inputs[1]), rtol=1e-6)
    # ReLU folded: uint8 asymmetric range [0, max] -> zero point 0 (ORT drops the Relu).
    assert const(relu.outputs[0].uses()[0].node.inputs[2]) == 0
    assert model.graph.outputs[0].name == "y" and producer_op(model, model.graph.outputs[0]) == "DequantizeLinear"
    assert result.stats["ops_quantized"] == {"Conv": 2}
    assert result.stats["activations_folded"] == {"Relu": 1}
    assert result.stats["weight_bytes_after"] < result.stats["weight_bytes_before"] / 2.5
    ref, got = run_both(before, model, feeds)
    s_y = scale_of(model.graph.outputs[0])
    assert np.sqrt(np.mean((got - ref) ** 2)) <= s_y  # typical error within one output step


def test_residual_add_and_data_movement_share_scale():
    model = make(
        "a = Conv <pads=[1,1,1,1]> (x, w1)\n ra = Relu(a)\n b = Conv <pads=[1,1,1,1]> (ra, w2)\n s = Add(a, b)\n"
        " f = Flatten(s)\n t = Reshape(f, shape)\n y = MatMul(t, w3)",
        "(float[1,3,4,4] x) => (float y)",
        {"w1": rand(3, 3, 3, 3), "w2": rand(3, 3, 3, 3), "w3": rand(48, 5), "shape": np.array([1, 48], np.int64)},
    )
    before = model.clone()
    result, _, feeds = quantize(model, calibration="minmax")
    add = nodes(model, "Add")[0]
    assert [producer_op(model, v) for v in add.inputs] == ["DequantizeLinear", "DequantizeLinear"]
    assert [u.node.op_type for u in add.outputs[0].uses()] == ["QuantizeLinear"]
    # `a` feeds a Relu and the Add: no folding (two readers), one QDQ read by both.
    relu = nodes(model, "Relu")[0]
    assert relu.inputs[0] is add.inputs[0]
    # Flatten and Reshape re-quantize with the Add output's scale: no new scale initializers.
    q_add = add.outputs[0].uses()[0].node
    for op in ("Flatten", "Reshape"):
        mover = nodes(model, op)[0]
        assert producer_op(model, mover.inputs[0]) == "DequantizeLinear"
        q = mover.outputs[0].uses()[0].node
        assert q.op_type == "QuantizeLinear" and q.inputs[1] is q_add.inputs[1] and q.inputs[2] is q_add.inputs[2]
    assert result.stats["scale_shared_ops"] == {"Flatten": 1, "Reshape": 1}
    assert result.stats["ops_quantized"] == {"Add": 1, "Conv": 2, "MatMul": 1}
    ref, got = run_both(before, model, feeds)
    assert np.abs(got - ref).max() <= 0.05 * np.abs(ref).max()


def test_concat_quantized_and_mixed_ranges_kept_float():
    body = "a = Conv(x, w1)\n b = Conv(x, w2)\n bs = Mul(b, k)\n y = Concat <axis=1> (a, bs)"
    inits = {"w1": rand(2, 3, 1, 1), "w2": rand(2, 3, 1, 1)}
    model = make(body, "(float[1,3,4,4] x) => (float y)", inits | {"k": np.array([1.0], np.float32)})
    result, _, _ = quantize(model)
    assert result.stats["ops_quantized"] == {"Concat": 1, "Conv": 2, "Mul": 1}
    # Box coordinates (x300) joined with scores: one scale would erase the scores.
    model = make(body, "(float[1,3,4,4] x) => (float y)", inits | {"k": np.array([300.0], np.float32)})
    before = model.clone()
    result, _, feeds = quantize(model)
    concat = nodes(model, "Concat")[0]
    assert producer_op(model, model.graph.outputs[0]) == "Concat"  # no shared output scale
    # The x300 branch keeps its own scale (the Mul's), never squeezed into the scores' 8 bits.
    assert scale_of(concat.inputs[1]) > 50 * scale_of(concat.inputs[0])
    assert "range-ratio" in result.stats["kept_float_nodes"][concat.name or "<Concat>"]
    assert "y" in result.stats["tensors_kept_float"]
    ref, got = run_both(before, model, feeds)
    scores_ref, scores_got = ref[:, :, :2], got[:, :, :2]
    assert np.abs(scores_got - scores_ref).max() <= 0.05 * np.abs(scores_ref).max()


def test_matmul_bias_add_quantizes_constant_operand_in_activation_type():
    w, b = rand(16, 8), rand(8)
    model = make("h = MatMul(x, w)\n y = Add(h, b)", "(float[2,5,16] x) => (float y)", {"w": w, "b": b})
    before = model.clone()
    result, _, feeds = quantize(model, calibration="minmax")
    mm, add = nodes(model, "MatMul")[0], nodes(model, "Add")[0]
    assert result.stats["ops_quantized"] == {"Add": 1, "MatMul": 1}
    assert result.stats["constant_operands_quantized"] == 1 and not result.stats["kept_float"]
    assert [u.node.op_type for u in mm.outputs[0].uses()] == ["QuantizeLinear"]  # stops ORT's MatMul+Add->Gemm
    # The bias: a uint8 initializer with its own per-tensor asymmetric scale, read through one DQ.
    b_dq = add.inputs[1].producer()
    assert b_dq.op_type == "DequantizeLinear" and "axis" not in b_dq.attributes
    q_b, s_b, z_b = const(b_dq.inputs[0]), float(const(b_dq.inputs[1])), const(b_dq.inputs[2])
    assert q_b.dtype == np.uint8 and z_b.dtype == np.uint8 and q_b.shape == (8,)
    assert s_b == pytest.approx((max(b.max(), 0) - min(b.min(), 0)) / 255, rel=1e-6)
    assert np.abs(qm.dequantize_array(q_b, s_b, z_b) - b).max() <= s_b / 2 * 1.0001
    assert "b" not in model.graph.initializers  # the float bias is gone
    w_dq = mm.inputs[1].producer()
    assert w_dq.attributes["axis"].as_int() == 1 and const(w_dq.inputs[1]).shape == (8,)
    ref, got = run_both(before, model, feeds)
    s_x, s_w, s_h, s_y = scale_of(mm.inputs[0]), const(w_dq.inputs[1]), scale_of(add.inputs[0]), scale_of(model.graph.outputs[0])
    x_max = max(np.abs(f["x"]).max() for f in feeds)
    # |dy| <= |dx|·Σ|w| + |x|·Σ|dw| + h's rounding + b's rounding + y's rounding, per column.
    bound = s_x / 2 * np.abs(w).sum(axis=0) + x_max * 16 * s_w / 2 + s_h / 2 + s_b / 2 + s_y / 2
    assert np.all(np.abs(got - ref) <= bound * 1.01)


def test_constant_operand_with_sentinels_or_shared_with_a_weight_stays_float():
    mask = np.where(rand(1, 6) > 0, 0.0, -3.4e38).astype(np.float32)
    # Mul(h, w): w is the MatMul's weight too.
    model = make("h = MatMul(x, w)\n y = Add(h, mask)\n z = Mul(h, w)", "(float[6,6] x) => (float y, float z)",
                 {"w": rand(6, 6), "mask": mask})
    result, _, _ = quantize(model, calibration="minmax")
    add, mul = nodes(model, "Add")[0], nodes(model, "Mul")[0]
    assert result.stats["kept_float_nodes"][add.name or "<Add>"] == "constant operand with sentinel values (mask)"
    assert result.stats["kept_float_nodes"][mul.name or "<Mul>"] == "constant operand shared with a weight"
    assert add.inputs[1].name == "mask" and result.stats["constant_operands_quantized"] == 0
    # The shared weight has one (int8, per-channel) form, read by the MatMul and the float Mul alike.
    assert mul.inputs[1] is nodes(model, "MatMul")[0].inputs[1]


def _attention(mask: bool) -> ir.Model:
    body = ("q = MatMul(x, wq)\n k = MatMul(x, wk)\n v = MatMul(x, wv)\n kt = Transpose <perm=[0,2,1]> (k)\n"
            " s = MatMul(q, kt)\n" + (" sm = Add(s, m)\n p = Softmax <axis=-1> (sm)\n" if mask else
                                       " p = Softmax <axis=-1> (s)\n") + " y = MatMul(p, v)")
    sig = "(float[2,6,8] x" + (", float[2,1,6] m" if mask else "") + ") => (float y)"
    return make(body, sig, {"wq": rand(8, 8, scale=0.3), "wk": rand(8, 8, scale=0.3), "wv": rand(8, 8)})


def test_attention_softmax_golden():
    model = _attention(mask=False)
    result, _, _ = quantize(model)
    softmax = nodes(model, "Softmax")[0]
    assert producer_op(model, softmax.inputs[0]) == "DequantizeLinear"
    q = softmax.outputs[0].uses()[0].node
    assert q.op_type == "QuantizeLinear"  # fixed output range [0, 1]: scale 1/255, zero point 0
    assert np.isclose(const(q.inputs[1]), 1 / 255) and const(q.inputs[2]) == 0
    # q·kᵀ: both operands are activations (no weights).
    qk = nodes(model, "MatMul")[3]
    assert [producer_op(model, v) for v in qk.inputs] == ["DequantizeLinear", "DequantizeLinear"]
    assert result.stats["ops_quantized"] == {"MatMul": 5, "Softmax": 1}
    # k is float (its MatMul fuses without a quantized output), so kᵀ gets its own scale after the Transpose.
    assert producer_op(model, nodes(model, "Transpose")[0].inputs[0]) == "MatMul"
    assert result.stats["scale_shared_ops"] == {}


def test_sentinel_mask_keeps_mask_path_float():
    model = _attention(mask=True)
    before = model.clone()
    feeds = random_feeds(model, 8)
    for f in feeds:
        f["m"] = np.where(RNG.random(f["m"].shape) < 0.3, np.float32(-3.4e38), np.float32(0.0))
    result, _, _ = quantize(model, feeds=feeds)
    add, softmax = nodes(model, "Add")[0], nodes(model, "Softmax")[0]
    kept = result.stats["kept_float_nodes"]
    assert "sentinel" in kept[add.name or "<Add>"] and "sentinel" in kept[softmax.name or "<Softmax>"]
    assert all(producer_op(model, v) != "DequantizeLinear" for v in (*add.inputs, softmax.inputs[0]))
    assert result.stats["ops_quantized"] == {"MatMul": 5}  # projections, q·kᵀ and p·v stay quantized
    ref, got = run_both(before, model, feeds)
    cos = np.sum(ref * got) / np.linalg.norm(ref) / np.linalg.norm(got)
    assert cos > 0.99


def test_layernorm_and_decomposed_norm_stay_float():
    body = ("h = MatMul(x, w1)\n n = LayerNormalization <axis=-1> (h, g, bt)\n"
            " mu = ReduceMean <axes=[-1]> (n)\n d = Sub(n, mu)\n sq = Pow(d, two)\n var = ReduceMean <axes=[-1]> (sq)\n"
            " ve = Add(var, eps)\n sd = Sqrt(ve)\n nn = Div(d, sd)\n sc = Mul(nn, g)\n o = Add(sc, bt)\n y = MatMul(o, w2)")
    inits = {"w1": rand(8, 8), "g": rand(8), "bt": rand(8), "w2": rand(8, 4),
             "two": np.array([2.0], np.float32), "eps": np.array([1e-5], np.float32)}
    model = make(body, "(float[4,8] x) => (float y)", inits)
    result, _, _ = quantize(model)
    for n in model.graph:
        if n.op_type in ("LayerNormalization", "ReduceMean", "Sub", "Pow", "Add", "Sqrt", "Div", "Mul"):
            assert all(producer_op(model, v) != "DequantizeLinear" for v in n.inputs), n.op_type
    assert nodes(model, "LayerNormalization")[0].inputs[0].producer().op_type == "MatMul"
    assert result.stats["ops_quantized"] == {"MatMul": 2}


def test_excluded_nodes_stay_float():
    def build() -> ir.Model:
        m = conv_relu_model()
        for i, n in enumerate(nodes(m, "Conv")):
            n.name = f"block{i}/conv"
        return m

    for pattern in ("block1/conv", "re:^block1/"):
        model = build()
        result, _, _ = quantize(model, exclude=(pattern,))
        kept = result.stats["kept_float_nodes"]
        assert kept.get("block1/conv") == "excluded"
        conv = node(model, "block1/conv")
        assert all(producer_op(model, v) != "DequantizeLinear" for v in conv.inputs[1:])
        assert "w2" in model.graph.initializers
    model = build()
    result, _, _ = quantize(model, exclude=("op:Conv",))
    assert not result.modified and "QuantizeLinear" not in ops_sequence(model)


def test_a_float_conv_between_quantized_neighbours_runs_float_on_ort():
    """ONNX Runtime quantizes a float Conv / Gemm between a per-tensor DQ and a Q itself (int8 per
    tensor, its WeightBiasQuantization): an excluded one reads its input through a DQ of its own with
    the scale written per axis, and ORT's profile shows it running in float."""
    import onnx_ir.passes.common

    from onnxpress.backends.ort import OrtRunner
    from onnxpress.passes.quantize import speed as sp

    rand = _seeded(5)
    model = make(
        "c1 = Conv <pads=[1,1,1,1]> (x, w1, b1)\n r1 = Relu (c1)\n mid = Conv <pads=[1,1,1,1]> (r1, w2, b2)\n"
        " r2 = Relu (mid)\n y = Conv <pads=[1,1,1,1]> (r2, w3, b3)",
        "(float[1,4,8,8] x) => (float y)",
        {"w1": rand(8, 4, 3, 3, scale=0.3), "b1": rand(8, scale=0.1), "w2": rand(8, 8, 3, 3, scale=0.3),
         "b2": rand(8, scale=0.1), "w3": rand(4, 8, 3, 3, scale=0.3), "b3": rand(4, scale=0.1)},
    )
    nodes(model, "Conv")[1].name = "middle"
    before = model.clone()
    result, _, feeds = quantize(model, calibration="minmax", exclude=("middle",))
    assert result.stats["kept_float_nodes"] == {"middle": "excluded"}
    mid = node(model, "middle")
    own_dq = mid.inputs[0].producer()
    assert own_dq.op_type == "DequantizeLinear" and own_dq.attributes["axis"].as_int() == 1
    assert const(own_dq.inputs[1]).shape == (8,) and np.ptp(const(own_dq.inputs[1])) == 0
    shared_dq = next(u.node for u in own_dq.inputs[0].uses() if u.node is not own_dq)
    assert const(own_dq.inputs[1])[0] == const(shared_dq.inputs[1])  # the same numbers, per axis
    onnx_ir.passes.common.NameFixPass()(model)  # the profile names kernels after nodes
    kernels = sp.kernel_times(OrtRunner(), model, feeds[0], runs=1, warmup=0)
    convs = set(nodes(model, "Conv"))
    assert sp.integer_nodes(kernels, model) & convs == convs - {mid}  # the other two are QLinearConv
    ref, got = run_both(before, model, feeds)
    assert np.sqrt(np.mean((got - ref) ** 2)) <= 2 * scale_of(model.graph.outputs[0])


# -- per-channel axes, numerics -----------------------------------------------------------------
@pytest.mark.parametrize(
    "op,body,w_shape,axis",
    [
        ("Conv", "y = Conv <pads=[1,1,1,1]> (x, w, b)", (6, 4, 3, 3), 0),
        ("ConvTranspose", "y = ConvTranspose <strides=[2,2]> (x, w, b)", (4, 6, 3, 3), 1),
        ("MatMul", "y = MatMul(xf, w)", (36, 6), 1),
        ("Gemm", "y = Gemm(xf, w, b)", (36, 6), 1),
        ("Gemm", "y = Gemm <transB=1> (xf, w, b)", (6, 36), 0),
    ],
)
def test_per_channel_axes_and_error_bound(op, body, w_shape, axis):
    # Channels of very different magnitudes: only per-channel scales on the right axis stay accurate.
    mags = np.array([0.01, 0.1, 1.0, 10.0, 0.5, 3.0], np.float32)
    w = rand(*w_shape) * mags.reshape([-1 if d == axis else 1 for d in range(len(w_shape))])
    flat = "xf = Flatten(x)\n " if "xf" in body else ""
    model = make(flat + body, "(float[2,4,3,3] x) => (float y)", {"w": w, "b": rand(6)})
    before = model.clone()
    result, _, feeds = quantize(model, calibration="minmax", n=4)
    layer = nodes(model, op)[0]
    w_dq = layer.inputs[1].producer()
    assert w_dq.op_type == "DequantizeLinear" and w_dq.attributes["axis"].as_int() == axis
    s_w = const(w_dq.inputs[1])
    assert s_w.shape == (6,)
    np.testing.assert_allclose(s_w, np.abs(w).max(axis=tuple(d for d in range(w.ndim) if d != axis)) / 127, rtol=1e-6)
    w_back = qm.dequantize_array(const(w_dq.inputs[0]), s_w, 0, axis=axis)
    assert np.all(np.abs(w_back - w) <= qm.dequantize_array(np.ones_like(w, dtype=np.int8), s_w, 0, axis=axis) / 2 * 1.001)
    if len(layer.inputs) > 2:
        b_dq = layer.inputs[2].producer()
        assert const(b_dq.inputs[0]).dtype == np.int32
        np.testing.assert_allclose(const(b_dq.inputs[1]), scale_of(layer.inputs[0]) * s_w, rtol=1e-6)
    ref, got = run_both(before, model, feeds)
    # Bound from the scales: input rounding through |w|, weight rounding through |x|, output rounding.
    s_x = scale_of(layer.inputs[0])
    x_max = max(np.abs(f["x"]).max() for f in feeds)
    per_channel_abs = np.abs(w).sum(axis=tuple(d for d in range(w.ndim) if d != axis))
    output = model.graph.outputs[0]
    out_step = scale_of(output) if producer_op(model, output) == "DequantizeLinear" else 0.0
    bound = (s_x / 2 * per_channel_abs.max() + x_max * (w.size // 6) * s_w.max() / 2
             + s_x * s_w.max() / 2 + out_step / 2)
    assert np.abs(got - ref).max() <= bound
    rel = np.linalg.norm(got - ref) / np.linalg.norm(ref)
    assert rel < 0.03, rel


def test_symmetric_vs_asymmetric_activations():
    errors = {}
    for symmetric in (False, True):
        model = conv_relu_model()
        before = model.clone()
        result, _, feeds = quantize(model, calibration="minmax", symmetric_activations=symmetric)
        x_dq = nodes(model, "Conv")[0].inputs[0].producer()
        zp = const(x_dq.inputs[2])
        assert zp == (128 if symmetric else qm.compute_scale_zero_point(
            min(f["x"].min() for f in feeds), max(f["x"].max() for f in feeds), "uint8", False)[1])
        assert result.stats["symmetric_activations"] is symmetric
        ref, got = run_both(before, model, feeds)
        errors[symmetric] = np.linalg.norm(got - ref) / np.linalg.norm(ref)
    assert max(errors.values()) < 0.05
    # ReLU output [0, max]: symmetric wastes half the uint8 codes, so it is not more accurate.
    assert errors[True] >= errors[False] * 0.8


def test_int8_and_16bit_activations():
    model = conv_relu_model()
    before = model.clone()
    result, _, feeds = quantize(model, activations="int8", calibration="minmax")
    assert const(nodes(model, "QuantizeLinear")[0].inputs[2]).dtype == np.int8
    ref, got8 = run_both(before, model, feeds)
    model = conv_relu_model()
    result, _, _ = quantize(model, feeds=feeds, activations="int16", calibration="minmax")
    assert result.stats["opset"] == "17->21"  # 16-bit QuantizeLinear needs opset 21
    assert const(nodes(model, "QuantizeLinear")[0].inputs[2]).dtype == np.int16
    _, got16 = run_both(before, model, feeds)
    assert np.linalg.norm(got16 - ref) < np.linalg.norm(got8 - ref)  # the int8 weights dominate both


def test_tied_weights_quantized_once():
    w = rand(8, 8)
    model = make("a = MatMul(x, w)\n r = Relu(a)\n y = MatMul(r, w)", "(float[3,8] x) => (float y)", {"w": w})
    before = model.clone()
    result, _, feeds = quantize(model)
    mm1, mm2 = nodes(model, "MatMul")
    assert mm1.inputs[1] is mm2.inputs[1]  # one DQ output read by both users
    int_inits = [v for v in model.graph.initializers.values() if v.dtype == ir.DataType.INT8 and v.shape.rank() == 2]
    assert len(int_inits) == 1 and "w" not in model.graph.initializers
    assert result.stats["tied_weights"] == 1 and result.stats["weights_quantized"] == 1
    ref, got = run_both(before, model, feeds)
    assert np.abs(got - ref).max() < 0.05 * np.abs(ref).max()
    # Tied along different axes (MatMul [K,N] and Gemm transB [N,K] read the same square constant):
    model = make("a = MatMul(x, w)\n y = Gemm <transB=1> (a, w)", "(float[3,8] x) => (float y)", {"w": w})
    quantize(model)
    dq = nodes(model, "MatMul")[0].inputs[1].producer()
    assert "axis" not in dq.attributes and nodes(model, "Gemm")[0].inputs[1] is dq.outputs[0]


# -- failure classes ----------------------------------------------------------------------------
def test_already_quantized_model_left_alone():
    model = conv_relu_model()
    quantize(model)
    snapshot = ops_sequence(model)
    result, ctx, _ = quantize(model)
    assert not result.modified and ops_sequence(model) == snapshot
    assert any("already contains" in d for d in ctx.diagnostics)
    result, _, _ = quantize(model, force=True)  # asked for: goes ahead without breaking anything
    assert result.stats["ops_quantized"]


def test_no_data_is_a_diagnostic():
    model = conv_relu_model()
    with PassContext(capabilities=get_backend("cpu").capabilities) as ctx:
        result = QuantizeQdqPass()(model)
    assert not result.modified and any("no runner or no calibration data" in d for d in ctx.diagnostics)


def test_old_opset_upgraded_or_per_tensor():
    w = rand(4, 3, 1, 1)

    def build() -> ir.Model:
        return make("c = Conv(x, w)\n y = Squeeze <axes=[0]> (c)", "(float[1,3,4,4] x) => (float y)",
                    {"w": w}, opset=11)

    model = build()
    before = model.clone()
    result, _, feeds = quantize(model)
    assert result.stats["opset"] == "11->13" and model.opset_imports[""] == 13
    assert nodes(model, "Conv")[0].inputs[1].producer().attributes["axis"].as_int() == 0
    ref, got = run_both(before, model, feeds)
    assert np.abs(got - ref).max() < 0.05 * np.abs(ref).max()
    model = build()
    result, ctx, _ = quantize(model, upgrade_opset=False)
    assert model.opset_imports[""] == 11 and result.stats["per_channel"] is False
    assert "axis" not in nodes(model, "Conv")[0].inputs[1].producer().attributes
    assert any("per tensor" in d for d in ctx.diagnostics)
    _, got = run_both(before, model, feeds)
    assert np.abs(got - ref).max() < 0.05 * np.abs(ref).max()


def test_subgraph_without_ranges_stays_float():
    w = rand(4, 4)
    model = make(
        "h = MatMul(x, w)\n y = If(c) <then_branch = t () => (float yt) { yt = MatMul(h, w) },"
        " else_branch = e () => (float ye) { ye = Relu(h) }>",
        "(float[2,4] x, bool c) => (float y)", {"w": w})
    before = model.clone()
    feeds = random_feeds(model, 4)
    for i, f in enumerate(feeds):
        f["c"] = np.array(i % 2 == 0)
    result, _, _ = quantize(model, feeds=feeds)
    assert result.stats["ops_quantized"] == {"MatMul": 1}
    assert "subgraph not calibrated" in result.stats["kept_float_nodes"].values()
    ref, got = run_both(before, model, feeds)
    assert np.abs(got - ref).max() < 0.05 * np.abs(ref).max()


def test_calibration_auto_keeps_the_clipping_with_the_best_output_sqnr():
    model = conv_relu_model()
    before = model.clone()
    result, _, feeds = quantize(model)  # the default: calibration=auto
    choice = result.stats["calibration_choice"]
    assert set(choice["sqnr_db"]) == {"percentile 99.999", "percentile 99.99", "mse"}
    assert choice["chosen"] == max(choice["sqnr_db"], key=choice["sqnr_db"].get)
    ref, got = run_both(before, model, feeds)
    assert np.linalg.norm(got - ref) / np.linalg.norm(ref) < 0.05


def test_auto_calibration_and_fallback_share_one_float_reference_run():
    class Counting:  # the CPU runner, counting runs of the float model itself
        def __init__(self, inner, model):
            self.inner, self.model, self.float_runs = inner, model, 0

        def run(self, model, feeds):
            self.float_runs += model is self.model
            return self.inner.run(model, feeds)

        def session(self, model):
            return self.inner.session(model)

    model = conv_relu_model()
    backend = get_backend("cpu")
    runner = Counting(backend.runner(), model)
    with PassContext(capabilities=backend.capabilities, runner=runner, data=random_feeds(model, 8)):
        result = QuantizeQdqPass(fallback="auto", if_slower="ignore")(model)
    assert "chosen" in result.stats["calibration_choice"] and "sqnr_db" in result.stats["fallback"]
    assert runner.float_runs == 1

"""quantize-qdq output really runs as integer kernels on ONNX Runtime's CPU EP.

ORT writes the graph it actually executes to `optimized_model_filepath`; the QDQ units we place must
come back as QLinearConv / QLinearMatMul / MatMulIntegerToFloat / QGemm / QLinearAdd ... there.
"""

from __future__ import annotations

from collections import Counter

import onnx
import onnx_ir as ir
import onnxruntime as ort

import numpy as np

from onnxpress.passes.quantize import placement
from tests.passes.quantize.test_qdq import conv_relu_model, make, nodes, quantize, rand, run_both


def executed_ops(model: ir.Model, tmp_path) -> Counter:
    path = str(tmp_path / "optimized.onnx")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED  # no NCHWc layouts
    options.optimized_model_filepath = path
    ort.InferenceSession(ir.serde.serialize_model(model).SerializeToString(), options,
                         providers=["CPUExecutionProvider"])
    return Counter(node.op_type for node in onnx.load(path).graph.node)


def test_conv_net_becomes_qlinearconv(tmp_path):
    model = make(
        "c1 = Conv <pads=[1,1,1,1]> (x, w1, b1)\n r1 = Relu(c1)\n p = MaxPool <kernel_shape=[2,2], strides=[2,2]> (r1)\n"
        " c2 = Conv <pads=[1,1,1,1]> (p, w2, b2)\n r2 = Relu(c2)\n s = Add(r2, p)\n g = GlobalAveragePool(s)\n"
        " f = Flatten(g)\n y = Gemm <transB=1> (f, w3, b3)",
        "(float[1,3,16,16] x) => (float y)",
        {"w1": rand(8, 3, 3, 3, scale=0.3), "b1": rand(8), "w2": rand(8, 8, 3, 3, scale=0.2), "b2": rand(8),
         "w3": rand(10, 8), "b3": rand(10)},
    )
    result, _, _ = quantize(model)
    assert result.stats["ops_quantized"] == {"Add": 1, "Conv": 2, "Gemm": 1, "GlobalAveragePool": 1}
    ops = executed_ops(model, tmp_path)
    assert ops["QLinearConv"] == 2 and ops["QLinearAdd"] == 1 and ops["QLinearGlobalAveragePool"] == 1
    assert ops["QGemm"] == 1
    # Relu folded away, MaxPool / Flatten run on uint8 between the integer kernels; one Q at the input.
    assert not ops["Relu"] and not ops["Conv"] and ops["QuantizeLinear"] == 1 and not ops["DequantizeLinear"]


def test_plain_conv_relu_chain(tmp_path):
    model = conv_relu_model()
    quantize(model)
    ops = executed_ops(model, tmp_path)
    assert ops["QLinearConv"] == 2 and not ops["Conv"] and not ops["Relu"]


def test_mlp_becomes_integer_matmuls(tmp_path):
    # 3-d tokens, bias Adds: without a Q on each MatMul output ORT would turn MatMul+Add into a float Gemm.
    model = make(
        "h = MatMul(x, w1)\n hb = Add(h, b1)\n a = Relu(hb)\n h2 = MatMul(a, w2)\n y = Add(h2, b2)",
        "(float[2,5,16] x) => (float y)", {"w1": rand(16, 32), "b1": rand(32), "w2": rand(32, 8), "b2": rand(8)})
    quantize(model)
    ops = executed_ops(model, tmp_path)
    assert ops["QLinearMatMul"] == 2 and not ops["MatMul"] and not ops["Gemm"]


def test_last_matmul_without_bias_becomes_matmul_integer_to_float(tmp_path):
    model = make("h = MatMul(x, w1)\n a = Relu(h)\n y = MatMul(a, w2)", "(float[4,16] x) => (float y)",
                 {"w1": rand(16, 32), "w2": rand(32, 8)})
    quantize(model)
    ops = executed_ops(model, tmp_path)
    assert ops["QLinearMatMul"] == 1 and ops["MatMulIntegerToFloat"] == 1 and not ops["MatMul"]


def test_gemm_becomes_qgemm(tmp_path):
    for trans_b, w1 in ((1, rand(32, 16)), (0, rand(16, 32))):
        model = make(f"h = Gemm <transB={trans_b}> (x, w1, b1)\n a = Relu(h)\n y = Gemm(a, w2, b2)",
                     "(float[4,16] x) => (float y)", {"w1": w1, "b1": rand(32), "w2": rand(32, 8), "b2": rand(8)})
        quantize(model)
        ops = executed_ops(model, tmp_path)
        assert ops["QGemm"] == 2 and not ops["Gemm"], ops


def test_attention_runs_integer_matmuls_and_softmax(tmp_path):
    model = make(
        "q = MatMul(x, wq)\n k = MatMul(x, wk)\n v = MatMul(x, wv)\n kt = Transpose <perm=[0,2,1]> (k)\n"
        " s = MatMul(q, kt)\n p = Softmax <axis=-1> (s)\n y = MatMul(p, v)",
        "(float[2,6,8] x) => (float y)", {"wq": rand(8, 8), "wk": rand(8, 8), "wv": rand(8, 8)})
    quantize(model)
    ops = executed_ops(model, tmp_path)
    assert ops["QLinearSoftmax"] == 1
    assert ops["QLinearMatMul"] + ops["MatMulIntegerToFloat"] == 5 and not ops["MatMul"]


def test_constant_operand_add_mul_become_qlinear_add_mul(tmp_path):
    # A hard-swish-like `+ 3` and `· (1/6)`, a per-channel scale and a bias: constants ORT needs in uint8.
    model = make(
        "c = Conv <pads=[1,1,1,1]> (x, w1)\n a = Add(c, three)\n r = Relu(a)\n s = Mul(r, sixth)\n"
        " h = Mul(c, s)\n g = Mul(h, gamma)\n b = Add(g, beta)\n y = Conv(b, w2)",
        "(float[1,3,8,8] x) => (float y)",
        {"w1": rand(8, 3, 3, 3, scale=0.5), "w2": rand(4, 8, 1, 1), "three": np.array([3.0], np.float32),
         "sixth": np.array([1 / 6], np.float32), "gamma": rand(8, 1, 1), "beta": rand(8, 1, 1)},
    )
    before = model.clone()
    result, _, feeds = quantize(model, calibration="minmax")
    assert result.stats["ops_quantized"] == {"Add": 2, "Conv": 2, "Mul": 3}
    assert result.stats["constant_operands_quantized"] == 4
    ops = executed_ops(model, tmp_path)
    assert ops["QLinearAdd"] == 2 and ops["QLinearMul"] == 3 and ops["QLinearConv"] == 2, ops
    assert not ops["Add"] and not ops["Mul"] and not ops["Clip"]
    # Integer from the input's Q to the output's DQ: no float island in between.
    assert ops["QuantizeLinear"] == 1 and ops["DequantizeLinear"] == 1
    ref, got = run_both(before, model, feeds)
    assert np.abs(got - ref).max() <= 0.05 * np.abs(ref).max()


def test_embedding_table_stored_and_gathered_in_uint8(tmp_path):
    table, pos = rand(50, 8), rand(6, 8, scale=0.1)
    model = make("e = Gather(table, ids)\n h = Add(e, pos)\n y = MatMul(h, w)",
                 "(int64[2,6] ids) => (float y)", {"table": table, "pos": pos, "w": rand(8, 4)})
    before = model.clone()
    feeds = [{"ids": np.random.default_rng(i).integers(0, 50, (2, 6))} for i in range(4)]
    result, _, _ = quantize(model, feeds, calibration="minmax")
    assert result.stats["tables_quantized"] == 1
    gather = next(n for n in model.graph if n.op_type == "Gather")
    t_dq = gather.inputs[0].producer()
    q_t = t_dq.inputs[0].const_value.numpy()
    assert t_dq.op_type == "DequantizeLinear" and q_t.dtype == np.uint8 and q_t.shape == (50, 8)
    (q_out,) = [use.node for use in gather.outputs[0].uses()]
    # The output is re-quantized with the table's own scale and zero point, so ORT can drop the pair.
    for i in (1, 2):
        assert q_out.inputs[i].const_value.numpy() == t_dq.inputs[i].const_value.numpy()
    ops = executed_ops(model, tmp_path)
    assert ops["Gather"] == 1 and ops["QLinearAdd"] == 1 and ops["DequantizeLinear"] <= 1, ops
    optimized = onnx.load(str(tmp_path / "optimized.onnx"))
    uint8_inits = {i.name for i in optimized.graph.initializer if i.data_type == onnx.TensorProto.UINT8}
    assert next(n for n in optimized.graph.node if n.op_type == "Gather").input[0] in uint8_inits
    # Gathered rows are the table rounded to its grid: within half a step of the float rows.
    s_t = float(t_dq.inputs[1].const_value.numpy())
    probe = make("y = Gather(table, ids)", "(int64[2,6] ids) => (float y)", {"table": table})
    assert quantize(probe, feeds)[0].stats["tables_quantized"] == 1
    ref, got = run_both(before, model, feeds)
    rows = np.stack([table[f["ids"]] for f in feeds])
    _, got_rows = run_both(probe, probe, feeds)
    assert np.abs(got_rows - rows).max() <= s_t / 2 * 1.0001
    assert np.abs(got - ref).max() <= 0.05 * np.abs(ref).max()


def _transformer_block():
    # h = LN(x); y = LN(h + (relu(h @ w1) @ w2 + b2)): the sum has one outlier channel (b2[3] = 40)
    # that the second LayerNorm all but ignores (its weight 0.01), as in BERT's residual streams.
    b2, g2 = rand(16), np.ones(16, np.float32)
    b2[3], g2[3] = 40.0, 0.01
    return make(
        "h = LayerNormalization <axis=-1> (x, g, beta)\n a = MatMul(h, w1)\n r = Relu(a)\n m = MatMul(r, w2)\n"
        " mb = Add(m, b2)\n s = Add(mb, h)\n y = LayerNormalization <axis=-1> (s, g2, beta)",
        "(float[2,6,16] x) => (float y)",
        {"g": np.ones(16, np.float32), "beta": rand(16, scale=0.1), "w1": rand(16, 32, scale=0.3),
         "w2": rand(32, 16, scale=0.3), "b2": b2, "g2": g2},
    )


def _sqnr(ref: np.ndarray, got: np.ndarray) -> float:
    return float(10 * np.log10(np.sum(ref.astype(np.float64) ** 2) / np.sum((ref - got).astype(np.float64) ** 2)))


def test_residual_stream_stays_float_and_matmul_stays_integer(tmp_path, monkeypatch):
    model = _transformer_block()
    before = model.clone()
    result, _, feeds = quantize(model, calibration="minmax")
    assert result.stats["ops_quantized"] == {"MatMul": 2}  # both Adds float (unnamed nodes share one key)
    assert result.stats["kept_float_nodes"] == {"<Add>": "residual stream into a norm"}
    # (m + b2) + h was re-associated to (m + h) + b2: the second MatMul's reader is no bias Add.
    mm1, mm2 = nodes(model, "MatMul")
    (reader,) = [use.node for use in mm2.outputs[0].uses()]
    assert reader.op_type == "Add" and reader.inputs[1] is mm1.inputs[0]  # m + h (h as its readers see it)
    (bias_add,) = [use.node for use in reader.outputs[0].uses()]
    assert bias_add.inputs[1].name == "b2" and bias_add.outputs[0].uses()[0].node.op_type == "LayerNormalization"
    ops = executed_ops(model, tmp_path)
    assert ops["QLinearMatMul"] == 1 and ops["MatMulIntegerToFloat"] == 1 and not ops["Gemm"] and not ops["MatMul"], ops
    assert ops["QuantizeLinear"] == 1  # only the first LayerNorm's output: the residual is never rounded
    ref, got = run_both(before, model, feeds)
    # The rule switched off: one 8-bit scale over the sums is set by the outlier channel.
    monkeypatch.setattr(placement, "residual_stream_adds", lambda model, excluded: set())
    rounded = before.clone()
    result, _, _ = quantize(rounded, feeds, calibration="minmax")
    assert result.stats["ops_quantized"] == {"Add": 2, "MatMul": 2}
    _, got_rounded = run_both(before, rounded, feeds)
    assert _sqnr(ref, got) > 40.0 and _sqnr(ref, got) > _sqnr(ref, got_rounded) + 10.0  # measured 47 vs 31 dB

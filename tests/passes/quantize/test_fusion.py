"""quantize-qdq output really runs as integer kernels on ONNX Runtime's CPU EP.

ORT writes the graph it actually executes to `optimized_model_filepath`; the QDQ units we place must
come back as QLinearConv / QLinearMatMul / MatMulIntegerToFloat / QGemm / QLinearAdd ... there.
"""

from __future__ import annotations

from collections import Counter

import onnx
import onnx_ir as ir
import onnxruntime as ort

from tests.passes.quantize.test_qdq import conv_relu_model, make, quantize, rand


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

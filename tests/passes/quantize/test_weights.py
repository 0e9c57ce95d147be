"""quantize-weights: the block math, both emitted forms on ORT, ORT's fusion, GPTQ / AWQ vs RTN."""

from __future__ import annotations

import os

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest

from onnxpress.backends.ort import OrtRunner
from onnxpress.errors import PipelineError
from onnxpress.passes import PassManager
from onnxpress.passes.manager import PassContext
from onnxpress.passes.quantize import blockwise as bw
from onnxpress.passes.quantize.weights import QuantizeWeightsPass
from tests.passes.pruning._models import Builder
from tests.util import run

K, N = 72, 24  # K is not a multiple of the block size: the last block is short


def linear_model(k: int = K, n: int = N, rows: int = 8, opset: int = 17, seed: int = 0) -> tuple[ir.Model, np.ndarray]:
    b = Builder(opset=opset, seed=seed)
    w = b.rand(k, n)
    y = b.op("MatMul", [b.input("x", [rows, k]), b.init("w", w)], name="fc")
    return b.model([y]), w


def mlp(opset: int = 13) -> ir.Model:
    b = Builder(opset=opset, seed=1)
    h = b.op("MatMul", [b.input("x", [2, 5, 64]), b.init("w1", b.rand(64, 96))], name="fc1")
    h = b.op("Relu", [b.op("Add", [h, b.init("b1", b.rand(96))])])
    y = b.op("MatMul", [h, b.init("w2", b.rand(96, 32))], name="fc2")
    return b.model([y])


def feeds(rows: int = 8, k: int = K, count: int = 2, seed: int = 3, channel_scale: np.ndarray | None = None) -> list[dict]:
    rng = np.random.default_rng(seed)
    scale = np.ones(k) if channel_scale is None else channel_scale
    return [{"x": (rng.standard_normal((rows, k)) * scale).astype(np.float32)} for _ in range(count)]


def ops(model: ir.Model) -> list[str]:
    return [node.op_type for node in model.graph]


def rtn_bound(w: np.ndarray, quant: bw.BlockQuant) -> np.ndarray:
    """RTN's error bound per weight: half a step, except where a symmetric (signed-scale) block's
    opposite end saturates at the largest code: |w| - qmax·|scale| there, at most one step."""
    step = np.abs(quant.expand(quant.scale))
    if not quant.symmetric:
        return step / 2
    _, qmax = bw.code_range(quant.bits, True)
    return np.maximum(step / 2, np.abs(w) - qmax * step)


def step_bound(w: np.ndarray, bits: int, symmetric: bool, block: int) -> np.ndarray:
    """The RTN error bound per weight, as RTN chooses the steps."""
    return rtn_bound(w, bw.quantize_rtn(w, bits, block, symmetric))


# -- block math -----------------------------------------------------------------------------------
@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("symmetric", [True, False])
def test_block_round_trip_within_the_rtn_bound(bits: int, symmetric: bool) -> None:
    w = np.random.default_rng(0).standard_normal((K, N)) * np.linspace(0.1, 3, N)
    w[40:48, 3] = 0.0  # an all-zero (partial) block
    quant = bw.quantize_rtn(w, bits, 16, symmetric)
    qmin, qmax = bw.code_range(bits, symmetric)
    assert quant.scale.shape == (5, N) and quant.codes.min() >= qmin and quant.codes.max() <= qmax
    assert (quant.zero_point is None) == symmetric
    error = np.abs(quant.dequantize() - w)
    step = np.abs(quant.expand(quant.scale))
    assert np.all(error <= rtn_bound(w, quant) * (1 + 1e-9)) and np.all(error <= step * (1 + 1e-9))
    if not symmetric:
        assert np.all(error <= step / 2 * (1 + 1e-9))
        return
    # The block's largest magnitude m lands exactly on the extra code: scale = m / qmin, signed.
    blocks = np.vstack([w, np.zeros((8, N))]).reshape(5, 16, N)
    lo, hi = blocks.min(axis=1), blocks.max(axis=1)
    m = np.where(-lo >= hi, lo, hi)
    np.testing.assert_allclose(quant.scale, np.where(m != 0, m / qmin, 1.0))
    codes = quant.codes.reshape(-1, N)[:K]
    at_extreme = np.abs(w) == np.repeat(np.abs(m), 16, axis=0)[:K]
    assert np.all(codes[at_extreme & (w != 0)] == qmin) and np.all(error[at_extreme] <= 1e-12)
    # Positive-m blocks get a finer step than the positive-scale form max(-lo / -qmin, hi / qmax).
    positive = (hi > -lo) & (hi > 0)
    assert positive.any() and np.all(np.abs(quant.scale[positive]) < (hi / qmax)[positive])


def test_matmulnbits_packing_low_nibble_first() -> None:
    assert bw.pack_codes(np.array([[1, 2, 3]]), 4).tolist() == [[0x21, 0x03]]
    quant = bw.BlockQuant(np.arange(32).reshape(32, 1) % 16, np.ones((2, 1)), np.array([[3], [5]]), 4, 16)
    b, scales, zp = bw.to_matmulnbits(quant)
    assert b.shape == (1, 2, 8) and scales.shape == (2,)
    assert zp.tolist() == [0x53]  # the column's two zero points in one byte


# -- the emitted forms on ORT ---------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["qdq", "matmulnbits"])
@pytest.mark.parametrize("bits,symmetric", [(4, True), (4, False), (8, True), (8, False)])
def test_quantized_layer_matches_float_within_the_bound(fmt: str, bits: int, symmetric: bool) -> None:
    model, w = linear_model(opset=17)
    data = feeds()
    reference = run(model, data)
    result = QuantizeWeightsPass(bits=bits, block_size=16, symmetric=symmetric, format=fmt)(model)
    assert result.modified and result.stats["layers_quantized"] == 1
    assert result.stats["bytes_after"] < result.stats["bytes_before"] / (2.5 if bits == 8 else 4)
    if fmt == "qdq":
        assert ops(model) == ["DequantizeLinear", "MatMul"] and model.opset_imports[""] == 21
        assert result.stats["opset"] == "17->21"
        dq = next(iter(model.graph))
        assert dq.attributes["block_size"].as_int() == 16 and dq.attributes["axis"].as_int() == 0
        code_type = {(4, True): ir.DataType.INT4, (4, False): ir.DataType.UINT4,
                     (8, True): ir.DataType.INT8, (8, False): ir.DataType.UINT8}[(bits, symmetric)]
        assert dq.inputs[0].dtype == code_type and list(dq.inputs[1].shape) == [5, N]
        assert (len(dq.inputs) == 3) != symmetric
    else:
        assert ops(model) == ["MatMulNBits"] and model.opset_imports[""] == 17
        node = next(iter(model.graph))
        assert node.domain == "com.microsoft" and node.attributes["bits"].as_int() == bits
        assert list(node.inputs[1].shape) == [N, 5, 16 * bits // 8]
    assert "w" not in model.graph.initializers
    proto = ir.serde.serialize_model(model)
    onnx.checker.check_model(proto)
    bound = np.abs(data[0]["x"]).astype(np.float64) @ step_bound(w, bits, symmetric, 16)
    for ref, got in zip(reference, run(model, data)):
        diff = np.abs(got["fc_out0"] - ref["fc_out0"])
        assert np.all(diff <= bound * 1.001 + 1e-4)
        assert diff.max() > 0  # really quantized


def test_ort_fuses_the_int4_qdq_form_into_matmulnbits(tmp_path) -> None:
    model = mlp(opset=13)
    data = [{"x": np.random.default_rng(0).standard_normal((2, 5, 64)).astype(np.float32)}]
    reference = run(model, data)[0]
    QuantizeWeightsPass(bits=4, block_size=32, format="qdq")(model)
    assert ops(model).count("DequantizeLinear") == 2
    proto = ir.serde.serialize_model(model)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.optimized_model_filepath = os.fspath(tmp_path / "optimized.onnx")
    options.log_severity_level = 3
    options.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "0")  # float compute
    session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    got = session.run(None, data[0])[0]
    fused = [n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node]
    assert fused.count("MatMulNBits") == 2 and "DequantizeLinear" not in fused
    ref = reference[next(iter(reference))]
    cosine = float(np.dot(ref.ravel(), got.ravel()) / (np.linalg.norm(ref) * np.linalg.norm(got)))
    assert cosine > 0.98


def test_shared_weight_quantized_once_and_embeddings_on_the_feature_axis() -> None:
    b = Builder(opset=21, seed=2)
    table = b.rand(50, 64)
    ids = b.input("ids", [3], onnx.TensorProto.INT64)
    e = b.op("Gather", [b.init("table", table), ids], name="embed")
    w = b.init("w", b.rand(64, 64))
    y = b.op("MatMul", [b.op("MatMul", [e, w], name="fc1"), w], name="fc2")
    model = b.model([y])
    data = [{"ids": np.array([0, 7, 49])}]
    reference = run(model, data)[0]
    result = QuantizeWeightsPass(bits=8, block_size=16, embeddings=True, symmetric=False)(model)
    stats = result.stats
    assert stats["weights_quantized"] == 1 and stats["layers_quantized"] == 2 and stats["embeddings_quantized"] == 1
    dqs = [n for n in model.graph if n.op_type == "DequantizeLinear"]
    assert len(dqs) == 2
    gather_dq = next(n for n in dqs if n.attributes["axis"].as_int() == 1)
    assert list(gather_dq.inputs[1].shape) == [50, 4]  # one scale per row and block of 16 features
    got = run(model, data)[0]
    np.testing.assert_allclose(got[y], reference[y], rtol=0.05, atol=0.05 * np.abs(reference[y]).max())


# -- data-aware methods ---------------------------------------------------------------------------
def anisotropic(seed: int, count: int) -> list[dict]:
    """Activations as real layers see them: correlated channels (a 24-dim latent plus noise)
    whose scales differ by 100x. GPTQ gains from the correlations, AWQ from the scale spread."""
    structure = np.random.default_rng(9)
    scale = np.exp(structure.uniform(-2.5, 2.0, 128))
    latent = structure.standard_normal((24, 128))
    rng = np.random.default_rng(seed)
    return [{"x": ((rng.standard_normal((32, 24)) @ latent + 0.3 * rng.standard_normal((32, 128))) * scale)
             .astype(np.float32)} for _ in range(count)]


def output_error(method: str, calibration: list[dict], held_out: list[dict]) -> tuple[float, dict]:
    model, _ = linear_model(k=128, n=64, rows=32, seed=5)
    reference = run(model, held_out)
    ctx = PassContext(runner=OrtRunner(), data=calibration)
    with ctx:
        result = QuantizeWeightsPass(bits=4, block_size=32, method=method)(model)
    got = run(model, held_out)
    num = sum(float(np.sum((g["fc_out0"] - r["fc_out0"]) ** 2)) for g, r in zip(got, reference))
    den = sum(float(np.sum(r["fc_out0"] ** 2)) for r in reference)
    return float(np.sqrt(num / den)), result.stats


def test_gptq_and_awq_beat_rtn_on_anisotropic_inputs() -> None:
    calibration, held_out = anisotropic(0, 32), anisotropic(1, 4)
    rtn, _ = output_error("rtn", calibration, held_out)
    gptq, gptq_stats = output_error("gptq", calibration, held_out)
    awq, awq_stats = output_error("awq", calibration, held_out)
    assert gptq_stats["methods"] == {"gptq": 1} and gptq_stats["layers"][0]["output_error"] > 0
    assert awq_stats["methods"] == {"awq": 1}
    assert gptq < 0.5 * rtn and awq < 0.9 * rtn, (rtn, gptq, awq)


def test_awq_inserts_the_inverse_scaling_in_front_of_the_layer() -> None:
    model, _ = linear_model(k=128, n=64, rows=32, seed=5)
    with PassContext(runner=OrtRunner(), data=anisotropic(0, 4)):
        QuantizeWeightsPass(method="awq", format="matmulnbits")(model)
    assert ops(model) == ["Mul", "MatMulNBits"]


def test_data_aware_methods_without_data_fall_back_to_rtn() -> None:
    model, _ = linear_model()
    ctx = PassContext()
    with ctx:
        result = QuantizeWeightsPass(method="gptq", block_size=16)(model)
    assert result.stats["methods"] == {"rtn": 1}
    assert any("round-to-nearest" in d for d in ctx.diagnostics)


def test_sequential_gptq_quantizes_every_layer_of_a_chain() -> None:
    model = mlp(opset=21)
    data = [{"x": np.random.default_rng(i).standard_normal((2, 5, 64)).astype(np.float32)} for i in range(4)]
    with PassContext(runner=OrtRunner(), data=data):
        result = QuantizeWeightsPass(method="gptq", format="matmulnbits")(model)
    assert result.stats["weights_quantized"] == 2 and "opset" not in result.stats
    assert ops(model).count("MatMulNBits") == 2
    run(model, data)


# -- what is left alone, options ------------------------------------------------------------------
def test_dynamic_weights_gemm_and_excluded_nodes_are_left_alone() -> None:
    b = Builder(opset=17)
    x = b.input("x", [4, 32])
    h = b.op("MatMul", [x, b.input("w_in", [32, 32])], name="dynamic")
    h = b.op("Gemm", [h, b.init("g", b.rand(32, 32))], name="gemm")
    y = b.op("MatMul", [h, b.init("w", b.rand(32, 32))], name="keep_me")
    model = b.model([y])
    result = QuantizeWeightsPass(exclude=("keep_me",))(model)
    assert not result.modified and ops(model) == ["MatMul", "Gemm", "MatMul"]
    assert result.stats["skip_reasons"] == {"dynamic weight": 1, "excluded": 1}
    assert model.opset_imports[""] == 17


def test_options_from_pipeline_text() -> None:
    pm = PassManager.from_pipeline("quantize-weights{bits=8 block-size=64 format=matmulnbits method=awq}")
    options = pm.passes[0].options
    assert (options.bits, options.block_size, options.format, options.method) == (8, 64, "matmulnbits", "awq")
    assert pm.to_text() == "quantize-weights{bits=8 block-size=64 format=matmulnbits method=awq}"
    for bad in ("block-size=24", "bits=3", "format=gguf", "method=hqq"):
        with pytest.raises(PipelineError):
            PassManager.from_pipeline(f"quantize-weights{{{bad}}}")

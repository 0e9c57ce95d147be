"""quantize-dynamic: the integer chain on ORT, ORT's fusion of it, Gemm folding, options."""

from __future__ import annotations

import os

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest

from onnxpress.passes import PassManager
from onnxpress.passes.quantize.dynamic import QuantizeDynamicPass
from tests.passes.pruning._models import Builder
from tests.util import run


def attention_like() -> tuple[ir.Model, str]:
    """x -> Q, K, V projections (one input) -> Q·Kᵀ·V -> Gemm(transB, bias, alpha, beta) -> y."""
    b = Builder(opset=17, seed=4)
    x = b.input("x", [16, 64])
    q, k, v = (b.op("MatMul", [x, b.init(f"w{n}", b.rand(64, 32) / 8)], name=n) for n in "qkv")
    scores = b.op("Softmax", [b.op("MatMul", [q, b.op("Transpose", [k], perm=[1, 0])], name="qk")], axis=-1)
    h = b.op("MatMul", [scores, v], name="pv")
    y = b.op("Gemm", [h, b.init("wo", b.rand(48, 32)), b.init("bo", b.rand(48))], name="out",
             transB=1, alpha=0.5, beta=2.0)
    return b.model([y]), y


def feeds(count: int = 2) -> list[dict]:
    rng = np.random.default_rng(7)
    return [{"x": rng.standard_normal((16, 64)).astype(np.float32)} for _ in range(count)]


def relative_error(model: ir.Model, reference: list[dict], data: list[dict], output: str) -> float:
    got = run(model, data)
    num = sum(float(np.linalg.norm(g[output] - r[output])) for g, r in zip(got, reference))
    return num / sum(float(np.linalg.norm(r[output])) for r in reference)


@pytest.mark.parametrize("per_channel,weights", [(True, "int8"), (False, "int8"), (True, "uint8")])
def test_dynamic_quantization_runs_and_is_close(per_channel: bool, weights: str) -> None:
    model, y = attention_like()
    data = feeds()
    reference = run(model, data)
    result = QuantizeDynamicPass(per_channel=per_channel, weights=weights)(model)
    assert result.modified
    assert result.stats["layers_quantized"] == 4 and result.stats["gemm_quantized"] == 1
    assert result.stats["bytes_after"] < result.stats["bytes_before"] / 3.5
    op_types = [n.op_type for n in model.graph]
    assert op_types.count("DynamicQuantizeLinear") == 2  # Q, K, V share one; the Gemm has its own
    assert op_types.count("MatMulInteger") == 4 and op_types.count("MatMul") == 2  # QKᵀ and PV stay float
    onnx.checker.check_model(ir.serde.serialize_model(model), full_check=True)
    assert relative_error(model, reference, data, y) < 0.05


def test_ort_fuses_the_integer_chain(tmp_path) -> None:
    model, _ = attention_like()
    QuantizeDynamicPass()(model)
    options = ort.SessionOptions()
    options.optimized_model_filepath = os.fspath(tmp_path / "optimized.onnx")
    options.log_severity_level = 3
    ort.InferenceSession(ir.serde.serialize_model(model).SerializeToString(), options,
                         providers=["CPUExecutionProvider"])
    fused = [n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node]
    assert "MatMulInteger" not in fused
    assert sum(op in ("DynamicQuantizeMatMul", "MatMulIntegerToFloat") for op in fused) == 4


def test_contrib_format_emits_dynamic_quantize_matmul() -> None:
    model, y = attention_like()
    data = feeds()
    reference = run(model, data)
    QuantizeDynamicPass(format="contrib", gemm=False)(model)
    op_types = [n.op_type for n in model.graph]
    assert op_types.count("DynamicQuantizeMatMul") == 3 and "Gemm" in op_types
    assert model.opset_imports["com.microsoft"] == 1
    assert relative_error(model, reference, data, y) < 0.05


def test_nothing_to_do_and_options() -> None:
    b = Builder(opset=17)
    y = b.op("MatMul", [b.input("x", [4, 8]), b.input("w", [8, 8])])
    model = b.model([y])
    result = QuantizeDynamicPass()(model)
    assert not result.modified and result.stats["skip_reasons"] == {"dynamic weight": 1}
    pm = PassManager.from_pipeline("quantize-dynamic{per-channel=false weights=uint8}")
    assert pm.to_text() == "quantize-dynamic{per-channel=false weights=uint8}"
    with pytest.raises(Exception):
        PassManager.from_pipeline("quantize-dynamic{weights=int4}")

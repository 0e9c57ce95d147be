"""The low-rank passes end to end: exact recovery on ORT, the cost gate, skips, data-aware SVD.

Weights with exact low-rank structure (A·B, a Tucker core between two channel maps, a sum of CP
terms, a TT chain) decomposed at their true ranks must give the original outputs on ONNX Runtime;
every emitted graph must pass the full checker (strict shape inference against the shapes the
pass set) and ONNX Runtime.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnx_ir as ir
import pytest

import onnxpress
from onnxpress.backends.ort import OrtRunner
from onnxpress.errors import PipelineError
from onnxpress.ir.cost import model_cost
from onnxpress.passes import PassManager
from onnxpress.passes.lowrank import (
    LowRankCpPass,
    LowRankSvdPass,
    LowRankTtPass,
    LowRankTuckerPass,
    lowrank_fragment,
)
from onnxpress.passes.lowrank import math as lrm
from onnxpress.passes.manager import PassContext
from tests.passes.pruning._models import Builder
from tests.util import run

RNG = np.random.default_rng(1234)


@pytest.fixture(autouse=True)
def _fresh_rng():
    """Every test draws the same weights whatever ran before it (pytest-xdist reorders tests)."""
    global RNG
    RNG = np.random.default_rng(1234)


# -- helpers ------------------------------------------------------------------------------------
def checked(model: ir.Model) -> ir.Model:
    """`model` serialised, fully checked (strict shape inference), and loaded back."""
    proto = ir.serde.serialize_model(model)
    onnx.checker.check_model(proto, full_check=True)
    onnx.shape_inference.infer_shapes(proto, strict_mode=True, check_type=True)
    return ir.serde.deserialize_model(proto)


def max_diff(before: ir.Model, after: ir.Model, feeds: list[dict]) -> float:
    """Largest |difference| of any output on ORT, relative to the largest |output|."""
    ref, got = run(before, feeds), run(checked(after), feeds)
    worst = 0.0
    for r, g in zip(ref, got):
        for name in r:
            assert r[name].shape == g[name].shape
            worst = max(worst, float(np.abs(r[name] - g[name]).max() / max(np.abs(r[name]).max(), 1e-12)))
    return worst


def apply(pass_: onnxpress.Pass, model: ir.Model) -> tuple[ir.Model, object]:
    """Run `pass_` on a clone; return (the original, the result)."""
    original = model.clone()
    return original, pass_(model)


def ops(model: ir.Model) -> list[str]:
    return [node.op_type for node in model.graph]


def assert_cost_matches(before: ir.Model, after: ir.Model, stats: dict) -> None:
    """The stats' params / MACs are what the cost model counts on the graphs."""
    c0, c1 = model_cost(before), model_cost(after)
    assert c0.params - c1.params == stats["params_before"] - stats["params_after"]
    assert c1.macs - c0.macs == stats["macs_after"] - stats["macs_before"]


def feeds_for(shape: list[int], n: int = 2, seed: int = 0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal(shape).astype(np.float32)} for _ in range(n)]


def rand(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def matmul_model(w: np.ndarray, x_shape: list, bias: bool = True) -> ir.Model:
    b = Builder()
    x = b.input("x", x_shape)
    y = b.op("MatMul", [x, b.init("w", w)], name="fc")
    if bias:
        y = b.op("Add", [y, b.init("bias", rand(w.shape[1]))], name="fc_bias")
    return b.model([y])


def conv_model(w: np.ndarray, x_shape: list[int], **attrs: object) -> ir.Model:
    b = Builder()
    x = b.input("x", x_shape)
    return b.model([b.conv(x, w.astype(np.float32), rand(w.shape[0]), name="conv", **attrs)])


# -- SVD ----------------------------------------------------------------------------------------
def test_svd_recovers_a_rank_4_matmul_with_batch_and_sequence_dims():
    w = rand(32, 4) @ rand(4, 24)
    model = matmul_model(w, [2, 5, 32])
    original, result = apply(LowRankSvdPass(rank=4), model)
    assert result.modified
    assert ops(model) == ["MatMul", "MatMul", "Add"]
    assert [n.name for n in model.graph][:2] == ["fc.svd_a", "fc.svd_b"]
    assert "w" not in model.graph.initializers
    assert list(model.graph.node(0).outputs[0].shape) == [2, 5, 4]
    (layer,) = result.stats["layers"]
    assert layer["ranks"] == [4] and layer["weight_error"] < 1e-6
    assert (layer["params_before"], layer["params_after"]) == (32 * 24, 4 * (32 + 24))
    assert max_diff(original, model, feeds_for([2, 5, 32])) <= 1e-4
    assert_cost_matches(original, model, result.stats)


def test_svd_keeps_symbolic_dims():
    model = matmul_model(rand(32, 2) @ rand(2, 16), ["batch", "seq", 32])
    original, result = apply(LowRankSvdPass(rank=2), model)
    assert result.modified
    assert [str(d) for d in model.graph.node(0).outputs[0].shape] == ["batch", "seq", "2"]
    assert max_diff(original, model, feeds_for([3, 7, 32])) <= 1e-4


@pytest.mark.parametrize("trans_a", [0, 1])
def test_svd_gemm_keeps_bias_and_folds_alpha(trans_a):
    w = rand(24, 4) @ rand(4, 32)  # B as [N, K]: transB=1
    b = Builder()
    x = b.input("x", [32, 6] if trans_a else [6, 32])
    y = b.op("Gemm", [x, b.init("w", w), b.init("c", rand(24))], name="gemm", transA=trans_a, transB=1,
             alpha=0.5, beta=2.0)
    model = b.model([y])
    original, result = apply(LowRankSvdPass(rank=4), model)
    assert result.modified
    assert ops(model) == ["Gemm" if trans_a else "MatMul", "Gemm"]
    assert model.graph.node(1).inputs[2].name == "c"
    assert max_diff(original, model, feeds_for([32, 6] if trans_a else [6, 32])) <= 1e-4


def test_svd_rank_ratio_rounds_to_the_alignment():
    model = matmul_model(rand(64, 96), [3, 64], bias=False)
    _, result = apply(LowRankSvdPass(rank_ratio=0.4), model)
    (layer,) = result.stats["layers"]
    # 0.4 of 64·96 params is rank 15.4: rounded to a multiple of 8
    assert layer["ranks"][0] % 8 == 0 and 8 <= layer["ranks"][0] <= 24
    assert layer["params_after"] == layer["ranks"][0] * (64 + 96)


def test_svd_energy_picks_the_true_rank():
    w = rand(48, 6) @ rand(6, 40)
    _, result = apply(LowRankSvdPass(energy=0.999999, align=1), matmul_model(w, [2, 48]))
    assert result.stats["layers"][0]["ranks"] == [6]


def test_the_cost_gate_refuses_unprofitable_ranks():
    # break-even rank of a 32x32 weight is 32·32/64 = 16: rank 15 saves 6 % < min-gain 10 %
    model = matmul_model(rand(32, 32), [2, 32])
    before = ops(model)
    _, result = apply(LowRankSvdPass(rank=15), model)
    assert not result.modified and ops(model) == before and "w" in model.graph.initializers
    assert result.stats["skip_reasons"] == {"params do not drop enough": 1}
    _, result = apply(LowRankSvdPass(rank=15, min_gain=0.0), model)
    assert result.modified


def test_dynamic_and_shared_weights_are_untouched():
    b = Builder()
    x, w_in = b.input("x", [2, 16]), b.input("w_in", [16, 16])
    shared = b.init("shared", rand(16, 2) @ rand(2, 16))
    y1 = b.op("MatMul", [x, w_in], name="dynamic")
    y2 = b.op("MatMul", [y1, shared], name="first")
    y3 = b.op("MatMul", [y2, shared], name="second")
    model = b.model([y3])
    _, result = apply(LowRankSvdPass(rank=2), model)
    assert not result.modified and ops(model) == ["MatMul"] * 3
    assert result.stats["skip_reasons"] == {"dynamic weight": 1, "weight shared with other nodes": 2}


def anisotropic_feeds(n: int, seed: int) -> list[dict[str, np.ndarray]]:
    """Inputs whose 32 directions have scales falling from 10 to 0.01 (a fixed rotation)."""
    rng = np.random.default_rng(seed)
    rotation = np.linalg.qr(np.random.default_rng(7).standard_normal((32, 32)))[0]
    scales = np.logspace(1, -2, 32)
    return [{"x": ((rng.standard_normal((4, 8, 32)) * scales) @ rotation).astype(np.float32)} for _ in range(n)]


def output_error(before: ir.Model, after: ir.Model, feeds: list[dict]) -> float:
    ref, got = run(before, feeds), run(after, feeds)
    num = sum(float(np.sum((r[k] - g[k]) ** 2)) for r, g in zip(ref, got) for k in r)
    den = sum(float(np.sum(r[k] ** 2)) for r in ref for k in r)
    return math.sqrt(num / den)


def two_layer_mlp() -> ir.Model:
    b = Builder(seed=5)
    x = b.input("x", [4, 8, 32])
    h = b.op("Relu", [b.op("MatMul", [x, b.init("w1", b.rand(32, 32))], name="fc1")])
    return b.model([b.op("MatMul", [h, b.init("w2", b.rand(32, 32))], name="fc2")])


def test_data_aware_svd_lowers_the_output_error():
    calibration, held_out = anisotropic_feeds(16, seed=0), anisotropic_feeds(4, seed=1)
    original = two_layer_mlp()
    plain = original.clone()
    LowRankSvdPass(rank=8)(plain)
    aware = original.clone()
    with PassContext(runner=OrtRunner(), data=calibration):
        result = LowRankSvdPass(rank=8, data_aware=True)(aware)
    assert [layer["method"] for layer in result.stats["layers"]] == ["whitened-svd"] * 2
    assert all("output_error" in layer for layer in result.stats["layers"])
    err_plain, err_aware = output_error(original, plain, held_out), output_error(original, checked(aware), held_out)
    assert err_aware < 0.5 * err_plain, (err_aware, err_plain)


def test_data_aware_svd_through_optimize_and_without_data():
    feeds = anisotropic_feeds(8, seed=2)
    out = onnxpress.optimize(two_layer_mlp(), "lowrank-svd{rank=8 data-aware=true}", data=feeds, verify="none")
    assert ops(out.model).count("MatMul") == 4
    model = two_layer_mlp()
    with PassContext() as ctx:  # no runner, no data: plain SVD and a diagnostic
        result = LowRankSvdPass(rank=8, data_aware=True)(model)
    assert result.modified and ctx.diagnostics
    assert {layer["method"] for layer in result.stats["layers"]} == {"svd"}


# -- Tucker-2 -----------------------------------------------------------------------------------
def tucker_kernel(c_out: int, c_in: int, ranks: tuple[int, int], k: int = 3) -> np.ndarray:
    core = rand(ranks[0], ranks[1], k, k)
    return np.einsum("rshw,or,is->oihw", core, rand(c_out, ranks[0]), rand(c_in, ranks[1]))


def test_tucker_recovers_a_structured_kernel_with_stride_and_pads():
    model = conv_model(tucker_kernel(16, 12, (4, 3)), [2, 12, 11, 11], strides=[2, 2], pads=[1, 0, 2, 1])
    original, result = apply(LowRankTuckerPass(ranks=(4, 3)), model)
    assert result.modified and ops(model) == ["Conv"] * 3
    first, core, last = model.graph
    assert list(core.attributes["strides"].as_ints()) == [2, 2]
    assert list(core.attributes["pads"].as_ints()) == [1, 0, 2, 1]
    assert "pads" not in first.attributes and last.inputs[2].name == "conv.b"
    assert list(first.inputs[1].const_value.shape) == [3, 12, 1, 1]
    assert max_diff(original, model, feeds_for([2, 12, 11, 11])) <= 1e-4
    assert_cost_matches(original, model, result.stats)


def test_tucker_energy_and_same_padding():
    b = Builder()
    x = b.input("x", [1, 16, 9, 9])
    w = b.init("conv.w", tucker_kernel(16, 16, (5, 6)))
    model = b.model([b.op("Conv", [x, w], name="conv", strides=[2, 2], auto_pad="SAME_UPPER")])
    original, result = apply(LowRankTuckerPass(energy=0.999999, align=1), model)
    assert result.stats["layers"][0]["ranks"] == [5, 6]
    assert max_diff(original, model, feeds_for([1, 16, 9, 9])) <= 1e-4


def test_tucker_hooi_iters_option():
    w = rand(16, 12, 3, 3)  # full rank: the HOOI sweeps have something to improve
    errors = []
    for pipeline in ("lowrank-tucker{ranks=6,5 hooi-iters=0}", "lowrank-tucker{ranks=6,5}"):
        _, result = apply(PassManager.from_pipeline(pipeline).passes[0], conv_model(w, [1, 12, 8, 8]))
        errors.append(result.stats["layers"][0]["weight_error"])
    assert errors[1] < errors[0]
    with pytest.raises(PipelineError):
        PassManager.from_pipeline("lowrank-tucker{hooi-iters=-1}")


def test_tucker_at_full_input_rank_folds_the_first_factor():
    model = conv_model(tucker_kernel(16, 3, (4, 3)), [2, 3, 8, 8])
    original, result = apply(LowRankTuckerPass(ranks=(4, 3)), model)
    assert ops(model) == ["Conv", "Conv"] and result.stats["layers"][0]["method"] == "tucker1"
    core, last = model.graph
    assert list(core.inputs[1].const_value.shape) == [4, 3, 3, 3] and len(core.inputs) == 2
    assert max_diff(original, model, feeds_for([2, 3, 8, 8])) <= 1e-4
    assert_cost_matches(original, model, result.stats)


def test_tucker_spectral_ranks_keep_what_the_kernel_uses_within_the_budget():
    # 480 -> 24, 1x3 (PP-OCR rec's neck shape, narrower): the inputs have rank 16, the outputs are full
    w = np.einsum("osk,si->oik", rand(24, 16, 3), rand(16, 480))[:, :, None, :]  # [24, 480, 1, 3], input rank 16
    r_out, r_in = lrm.tucker_ranks_by_spectra(w, keep=0.5, align=8)
    assert (r_out, r_in) == (24, 16)  # proportional ranks would cut the outputs to 1
    assert lrm.tucker_ranks_for_ratio(w.shape, 0.5)[0] <= 2
    params = r_out * r_in * 3 + r_in * 480  # full-rank output mode folded into the core
    assert params <= 0.5 * w.size
    # no pair fits: full ranks, which the cost gate refuses
    assert lrm.tucker_ranks_by_spectra(rand(16, 3, 3, 3), keep=0.5, align=8) == (16, 3)
    model = conv_model(w, [2, 480, 4, 16], pads=[0, 1, 0, 1])
    original, result = apply(LowRankTuckerPass(rank_ratio=0.5), model)  # rank-select=spectra: the default
    assert result.stats["layers"][0]["ranks"] == [24, 16] and result.stats["layers"][0]["method"] == "tucker1"
    assert max_diff(original, model, feeds_for([2, 480, 4, 16])) <= 1e-4
    _, proportional = apply(LowRankTuckerPass(rank_ratio=0.5, rank_select="proportional"), conv_model(w, [1, 480, 4, 16]))
    assert proportional.stats["layers"][0]["ranks"][0] <= 8
    with pytest.raises(PipelineError):
        PassManager.from_pipeline("lowrank-tucker{rank-select=greedy}")


def test_tucker_refit_reproduces_the_conv_outputs_better():
    # two convs in a row, inputs with strongly unequal channel energies; weights near full rank
    b = Builder(seed=5)
    x = b.input("x", [1, 16, 12, 12])
    h = b.op("Relu", [b.conv(x, b.rand(24, 16, 3, 3) / 12, b.rand(24), name="c1", pads=[1, 1, 1, 1])])
    model = b.model([b.conv(h, b.rand(16, 24, 3, 3) / 14, b.rand(16), name="c2", pads=[1, 1, 1, 1])])
    scales = np.logspace(0.5, -1.5, 16).astype(np.float32)[None, :, None, None]
    rng = np.random.default_rng(0)
    cal = [{"x": rng.standard_normal((1, 16, 12, 12)).astype(np.float32) * scales} for _ in range(16)]
    held = [{"x": rng.standard_normal((1, 16, 12, 12)).astype(np.float32) * scales} for _ in range(4)]
    errors, stats = {}, {}
    for refit in (False, True):
        out = model.clone()
        with PassContext(runner=OrtRunner(), data=cal):
            result = LowRankTuckerPass(ranks=(8, 8), refit=refit)(out)
        ref, got = run(model, held), run(checked(out), held)
        errors[refit] = float(np.sqrt(sum(np.sum((r[k] - g[k]) ** 2) for r, g in zip(ref, got) for k in r)
                                      / sum(np.sum(r[k] ** 2) for r in ref for k in r)))
        stats[refit] = result.stats
    assert set(stats[True]["refits"]) == {"c1", "c2"}
    assert all(r["refitted"] and r["error_after"] < r["error_before"] for r in stats[True]["refits"].values())
    assert "refits" not in stats[False]
    assert errors[True] < 0.8 * errors[False], errors  # measured 0.387 vs 0.591
    # without data: the chains are left as decomposed, and the context says why
    out = model.clone()
    with PassContext(runner=OrtRunner()) as ctx:
        result = LowRankTuckerPass(ranks=(8, 8), refit=True)(out)
    assert result.stats["decomposed"] == 2 and "refits" not in result.stats
    assert any("refit=true needs" in line for line in ctx.diagnostics)


def test_grouped_and_pointwise_convs_are_untouched():
    b = Builder()
    x = b.input("x", [1, 16, 8, 8])
    h = b.conv(x, b.rand(16, 8, 3, 3), name="grouped", group=2)
    y = b.conv(h, b.rand(16, 16, 1, 1), name="pointwise")
    model = b.model([y])
    for pass_ in (LowRankTuckerPass(rank_ratio=0.2), LowRankCpPass(rank=2)):
        _, result = apply(pass_, model)
        assert not result.modified and ops(model) == ["Conv", "Conv"]
        assert result.stats["skip_reasons"] == {"grouped conv": 1, "1x1 kernel": 1}


# -- CP ------------------------------------------------------------------------------------------
def test_cp_recovers_a_structured_kernel():
    rank = 3
    w = np.einsum("or,ri,rh,rw->oihw", rand(16, rank), rand(rank, 12), rand(rank, 3), rand(rank, 5))
    model = conv_model(w, [2, 12, 10, 12], strides=[2, 1], pads=[1, 2, 0, 2], dilations=[1, 2])
    original, result = apply(LowRankCpPass(rank=rank), model)
    assert result.modified and ops(model) == ["Conv"] * 4
    _, vertical, horizontal, _ = model.graph
    assert vertical.attributes["group"].as_int() == rank
    assert list(vertical.attributes["strides"].as_ints()) == [2, 1]
    assert list(vertical.attributes["pads"].as_ints()) == [1, 0, 0, 0]
    assert list(horizontal.attributes["dilations"].as_ints()) == [1, 2]
    assert list(horizontal.attributes["pads"].as_ints()) == [0, 2, 0, 2]
    assert result.stats["layers"][0]["weight_error"] < 1e-4
    assert max_diff(original, model, feeds_for([2, 12, 10, 12])) <= 1e-4
    assert_cost_matches(original, model, result.stats)


# -- tensor-train ------------------------------------------------------------------------------
def tt_weight(in_f: tuple[int, ...], out_f: tuple[int, ...], ranks: tuple[int, ...]) -> np.ndarray:
    """W [K, N] = G1[i1, j1] ⋯ Gd[id, jd] with random cores of the given inner ranks."""
    r = (1, *ranks, 1)
    cores = [rand(r[k], i, j, r[k + 1]) for k, (i, j) in enumerate(zip(in_f, out_f))]
    t = cores[0]
    for core in cores[1:]:
        t = np.tensordot(t, core, axes=([-1], [0]))
    d = len(cores)
    t = t.reshape([x for pair in zip(in_f, out_f) for x in pair])  # i1 j1 i2 j2 ...
    t = t.transpose([*range(0, 2 * d, 2), *range(1, 2 * d, 2)])
    return t.reshape(math.prod(in_f), math.prod(out_f)) / 4


def test_cp_restarts_keep_the_closest_fit():
    w = rand(8, 6, 3, 3)  # rank 5 > 3 taps: the starts differ in their random columns
    errors = []
    for restarts in (1, 4):
        model = conv_model(w, [1, 6, 7, 7])
        _, result = apply(LowRankCpPass(rank=5, restarts=restarts, max_iters=20, min_gain=0.0), model)
        errors.append(result.stats["layers"][0]["weight_error"])
    singles = [float(np.linalg.norm(lrm.cp_reconstruct(*lrm.cp_conv(w, 5, seed=s, n_iter_max=20)) - w)
                     / np.linalg.norm(w)) for s in range(4)]
    assert errors[0] == pytest.approx(singles[0], rel=1e-5)
    assert errors[1] == pytest.approx(min(singles), rel=1e-5) and len(set(np.round(singles, 6))) > 1


@pytest.mark.parametrize("x_shape", [[2, 5, 24], ["batch", 5, 24]])
def test_tt_recovers_a_structured_matrix(x_shape):
    w = tt_weight((2, 3, 4), (4, 2, 4), (3, 3))
    model = matmul_model(w, x_shape)
    original, result = apply(LowRankTtPass(max_rank=3, in_factors=(2, 3, 4), out_factors=(4, 2, 4)), model)
    assert result.modified and ops(model).count("MatMul") == 3
    (layer,) = result.stats["layers"]
    assert layer["ranks"] == [3, 3] and layer["weight_error"] < 1e-5
    assert max_diff(original, model, feeds_for([2 if x_shape[0] == 2 else 3, 5, 24])) <= 1e-4


def test_tt_reports_that_it_raises_macs():
    w = tt_weight((8, 8), (8, 8), (8,))
    model = matmul_model(w, [4, 64], bias=False)
    original, result = apply(LowRankTtPass(max_rank=8, in_factors=(8, 8), out_factors=(8, 8)), model)
    stats = result.stats
    assert result.modified and stats["layers"][0]["ranks"] == [8]
    assert stats["params_after"] < 1100 < stats["params_before"]  # 2 cores of 8·8·8 and the shape constants
    assert stats["macs_after"] > stats["macs_before"]  # parameters traded for MACs, and said so
    assert_cost_matches(original, model, stats)
    assert max_diff(original, model, feeds_for([4, 64])) <= 1e-4


def test_tt_include_exclude_scope():
    b = Builder()
    x = b.input("x", [4, 64])
    h = b.op("MatMul", [x, b.init("fc0.w", tt_weight((8, 8), (8, 8), (4,)))], name="fc0")
    y = b.op("MatMul", [h, b.init("fc1.w", tt_weight((8, 8), (8, 8), (4,)))], name="fc1")
    model = b.model([y])
    original, result = apply(LowRankTtPass(max_rank=4, include=("re:fc",), exclude=("fc1",)), model)
    assert [layer["node"] for layer in result.stats["layers"]] == ["fc0"]
    assert result.stats["skip_reasons"] == {"out of scope (include / exclude)": 1}
    assert ops(model).count("MatMul") == 3  # fc0's two cores, fc1 untouched
    assert max_diff(original, model, feeds_for([4, 64])) <= 1e-4
    with pytest.raises(PipelineError):
        PassManager.from_pipeline("lowrank-tt{include=re:(}")


# -- text -------------------------------------------------------------------------------------
def test_lowrank_fragment_is_a_valid_pipeline():
    text = lowrank_fragment(0.3, data=True)
    assert text == ("lowrank-svd{rank-ratio=0.7 data-aware=true align=8},"
                    "lowrank-tucker{rank-ratio=0.7 align=8 refit=true}")
    pm = PassManager.from_pipeline(text)
    assert [p.options.rank_ratio for p in pm.passes] == [0.7, 0.7]
    assert pm.passes[1].options.rank_select == "spectra" and pm.passes[1].options.refit  # spectra: the default
    assert "data-aware" not in lowrank_fragment(0.5, data=False) and "refit" not in lowrank_fragment(0.5, data=False)
    assert PassManager.from_pipeline("lowrank-tucker{ranks=4,3}").to_text() == "lowrank-tucker{ranks=4,3}"
    with pytest.raises(PipelineError):
        PassManager.from_pipeline("lowrank-svd{rank=4 energy=0.9}")
    with pytest.raises(ValueError):
        lowrank_fragment(1.0, data=False)

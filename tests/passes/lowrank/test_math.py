"""The decomposition math (`onnxpress.passes.lowrank.math`): exact recovery, error theory, the
data-aware variants, rank selection and the cost helpers. Small sizes; no ONNX involved."""

from __future__ import annotations

import math

import numpy as np
import pytest

from onnxpress.passes.lowrank import math as lrm


def rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(np.asarray(a, np.float64) - b) / np.linalg.norm(b))


def orthonormal(rng: np.random.Generator, n: int, r: int) -> np.ndarray:
    q, _ = np.linalg.qr(rng.standard_normal((n, r)))
    return q


def conv2d(x: np.ndarray, w: np.ndarray, groups: int = 1) -> np.ndarray:
    """Valid cross-correlation, stride 1, as ONNX Conv computes it: x [Cin, H, W] -> [Cout, H', W']."""
    c_out, c_in_g, kh, kw = w.shape
    h, wd = x.shape[1] - kh + 1, x.shape[2] - kw + 1
    out = np.zeros((c_out, h, wd))
    per_group = c_out // groups
    for o in range(c_out):
        g = o // per_group
        xs = x[g * c_in_g:(g + 1) * c_in_g]
        for i in range(kh):
            for j in range(kw):
                out[o] += np.einsum("c,chw->hw", w[o, :, i, j], xs[:, i:i + h, j:j + wd])
    return out


# -- exact recovery ------------------------------------------------------------------------------
def test_truncated_svd_recovers_a_rank_r_matrix():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((40, 5)) @ rng.standard_normal((5, 30))
    a, b = lrm.truncated_svd(w, 5)
    assert a.shape == (40, 5) and b.shape == (5, 30)
    assert rel(a @ b, w) <= 1e-6
    # sqrt split: both factors carry the same column / row norms
    np.testing.assert_allclose(np.linalg.norm(a, axis=0), np.linalg.norm(b, axis=1), rtol=1e-10)


def test_factors_come_back_in_the_weight_dtype():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((16, 12)).astype(np.float32)
    a, b = lrm.truncated_svd(w, 4)
    assert a.dtype == b.dtype == np.float32
    first, core, last = lrm.tucker2_conv(rng.standard_normal((6, 5, 3, 3)).astype(np.float16), (3, 3))
    assert first.dtype == core.dtype == last.dtype == np.float16


def test_tucker2_recovers_a_tucker_kernel_and_the_chain_equals_the_conv():
    rng = np.random.default_rng(2)
    c_out, c_in, r_out, r_in = 12, 10, 4, 3
    core = rng.standard_normal((r_out, r_in, 3, 3))
    w = np.einsum("ob,bahw,ia->oihw", orthonormal(rng, c_out, r_out), core, orthonormal(rng, c_in, r_in))
    first, g, last = lrm.tucker2_conv(w, (r_out, r_in))
    assert first.shape == (r_in, c_in, 1, 1) and g.shape == (r_out, r_in, 3, 3) and last.shape == (c_out, r_out, 1, 1)
    assert rel(lrm.tucker2_reconstruct(first, g, last), w) <= 1e-4
    x = rng.standard_normal((c_in, 7, 6))
    chain = conv2d(conv2d(conv2d(x, first), g), last)
    assert rel(chain, conv2d(x, w)) <= 1e-4


def test_tt_matrix_recovers_a_tt_matrix():
    rng = np.random.default_rng(3)
    in_f, out_f, r = [4, 3, 5], [2, 6, 4], 3
    ranks = [1, r, r, 1]
    true = [rng.standard_normal((ranks[i], in_f[i], out_f[i], ranks[i + 1])) for i in range(3)]
    w = lrm.tt_reconstruct(true, 60, 48)
    cores = lrm.tt_matrix(w, r, in_factors=in_f, out_factors=out_f)
    assert [c.shape for c in cores] == [(1, 4, 2, 3), (3, 3, 6, 3), (3, 5, 4, 1)]
    assert rel(lrm.tt_reconstruct(cores, 60, 48), w) <= 1e-4
    # the documented layout: W[(i1,i2,i3), (j1,j2,j3)] = G1[0,i1,j1,:] @ G2[:,i2,j2,:] @ G3[:,i3,j3,0]
    i, j = (1, 2, 3), (1, 4, 2)
    entry = cores[0][0, i[0], j[0]] @ cores[1][:, i[1], j[1]] @ cores[2][:, i[2], j[2], 0]
    assert entry == pytest.approx(w[np.ravel_multi_index(i, in_f), np.ravel_multi_index(j, out_f)], rel=1e-8)


def test_cp_conv_recovers_a_cp_kernel_and_the_chain_equals_the_conv():
    rng = np.random.default_rng(4)
    rank = 3
    f_out, f_in, f_h, f_w = (rng.standard_normal((d, rank)) for d in (8, 6, 3, 3))
    w = np.einsum("or,ir,hr,wr->oihw", f_out, f_in, f_h, f_w)
    pw_in, vertical, horizontal, pw_out = lrm.cp_conv(w, rank, seed=0, n_iter_max=100)
    assert pw_in.shape == (3, 6, 1, 1) and vertical.shape == (3, 1, 3, 1)
    assert horizontal.shape == (3, 1, 1, 3) and pw_out.shape == (8, 3, 1, 1)
    assert rel(lrm.cp_reconstruct(pw_in, vertical, horizontal, pw_out), w) <= 1e-3
    x = rng.standard_normal((6, 6, 7))
    chain = conv2d(conv2d(conv2d(conv2d(x, pw_in), vertical, rank), horizontal, rank), pw_out)
    assert rel(chain, conv2d(x, w)) <= 1e-3


def test_decompositions_are_deterministic():
    rng = np.random.default_rng(5)
    w = rng.standard_normal((6, 5, 3, 3))
    for a, b in zip(lrm.cp_conv(w, 4, seed=7, n_iter_max=5), lrm.cp_conv(w, 4, seed=7, n_iter_max=5)):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(lrm.tucker2_conv(w, (3, 3)), lrm.tucker2_conv(w, (3, 3))):
        np.testing.assert_array_equal(a, b)


def test_tucker2_hosvd_is_exact_for_one_mode_and_hooi_only_improves_it():
    rng = np.random.default_rng(12)
    w = rng.standard_normal((24, 10, 3, 3))
    # Tucker-1 on the output mode (r_in = Cin) is a truncated SVD of the [Cout, Cin·kh·kw]
    # unfolding: the error must be the singular-value tail, without any HOOI sweep.
    s = lrm.singular_values(w.reshape(24, -1))
    first, core, last = lrm.tucker2_conv(w, (7, 10), n_iter_max=0)
    err = np.linalg.norm(lrm.tucker2_reconstruct(first, core, last) - w)
    assert err == pytest.approx(lrm.svd_tail_error(s, 7), rel=1e-9)
    # on both modes HOOI sweeps never lose against the HOSVD start, and here they gain
    errors = [rel(lrm.tucker2_reconstruct(*lrm.tucker2_conv(w, (6, 5), n_iter_max=n)), w) for n in (0, 1, 10)]
    assert errors[0] > errors[1] >= errors[2] - 1e-12
    with pytest.raises(ValueError, match="non-negative"):
        lrm.tucker2_conv(w, (6, 5), n_iter_max=-1)


def test_cp_sweeps_lower_the_error():
    rng = np.random.default_rng(13)
    w = rng.standard_normal((12, 10, 3, 3))
    errors = [rel(lrm.cp_reconstruct(*lrm.cp_conv(w, 16, seed=0, n_iter_max=n, tol=0.0)), w) for n in (1, 5, 40)]
    assert errors[0] > errors[1] > errors[2]
    # the columns of the three inner factors are unit vectors; the scale sits in pw_out
    pw_in, vertical, horizontal, _ = lrm.cp_conv(w, 16, seed=0, n_iter_max=3)
    for f in (pw_in[:, :, 0, 0], vertical[:, 0, :, 0], horizontal[:, 0, 0, :]):
        np.testing.assert_allclose(np.linalg.norm(f, axis=1), 1.0, rtol=1e-6)


@pytest.mark.slow
def test_wide_conv_decompositions_take_seconds():
    """The ResNet-18 widest 3×3 kernel (512×512): tensorly's HOOI took minutes, its CP-ALS 80 s."""
    import time

    w = np.random.default_rng(14).standard_normal((512, 512, 3, 3)).astype(np.float32)
    start = time.perf_counter()
    lrm.tucker2_conv(w, (128, 128), n_iter_max=5)
    lrm.cp_conv(w, 64, n_iter_max=10)
    assert time.perf_counter() - start < 30.0


# -- error theory --------------------------------------------------------------------------------
@pytest.mark.parametrize("rank", [1, 4, 9])
def test_truncation_error_is_the_singular_value_tail(rank):
    rng = np.random.default_rng(6)
    w = rng.standard_normal((24, 18))
    a, b = lrm.truncated_svd(w, rank)
    s = lrm.singular_values(w)
    assert np.all(np.diff(s) <= 0)
    tail = lrm.svd_tail_error(s, rank)
    assert np.linalg.norm(w - a @ b) == pytest.approx(tail, rel=1e-8)
    assert lrm.svd_tail_error(s, 18) == 0.0


# -- data-aware beats plain ----------------------------------------------------------------------
def test_whitened_and_activation_aware_svd_beat_plain_svd_on_anisotropic_inputs():
    rng = np.random.default_rng(7)
    k, n, tokens, rank = 32, 24, 512, 6
    scales = np.logspace(-2, 2, k)
    x = rng.standard_normal((tokens, k)) * scales
    w = rng.standard_normal((k, n))
    gram = x.T @ x

    def err(a, b):
        return np.linalg.norm(x @ (w - a @ b)) / np.linalg.norm(x @ w)

    plain = err(*lrm.truncated_svd(w, rank))
    whitened = err(*lrm.whitened_svd(w, gram, rank))
    activation = err(*lrm.asvd(w, np.abs(x).mean(axis=0), rank))
    assert whitened < plain and activation < plain
    assert whitened <= activation + 1e-9  # whitening is optimal for this objective
    # output_error reads the same number from the Gram alone
    a, b = lrm.whitened_svd(w, gram, rank)
    assert lrm.output_error(w, a, b, gram) == pytest.approx(whitened, rel=1e-6)


def test_whitened_svd_survives_a_rank_deficient_gram():
    rng = np.random.default_rng(8)
    x = rng.standard_normal((5, 16))  # 5 tokens for a 16-dim Gram
    x[:, 3] = 0.0  # and a dead channel
    w = rng.standard_normal((16, 10))
    a, b = lrm.whitened_svd(w, x.T @ x, 5)
    assert np.all(np.isfinite(a)) and np.all(np.isfinite(b))
    # rank 5 reproduces the outputs of 5 tokens exactly
    assert lrm.output_error(w, a, b, x.T @ x) <= 1e-4
    a, b = lrm.asvd(w, np.abs(x).mean(axis=0), 5)
    assert np.all(np.isfinite(a))


# -- rank selection and edge cases ----------------------------------------------------------------
def test_rank_for_energy():
    s = np.array([3.0, 2.0, 1.0, 0.0])  # energies 9, 4, 1 of 14
    assert lrm.rank_for_energy(s, 9 / 14) == 1
    assert lrm.rank_for_energy(s, 0.65) == 2
    assert lrm.rank_for_energy(s, 13 / 14) == 2
    assert lrm.rank_for_energy(s, 1.0) == 3
    assert lrm.rank_for_energy(np.zeros(3), 0.9) == 1
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="energy"):
            lrm.rank_for_energy(s, bad)


def test_rank_for_param_ratio():
    assert lrm.rank_for_param_ratio(384, 1536, 0.5) == 153  # floor(0.5 * 384 * 1536 / 1920)
    r = lrm.rank_for_param_ratio(100, 60, 0.3)
    assert r * 160 <= 0.3 * 6000 < (r + 1) * 160
    assert lrm.rank_for_param_ratio(100, 60, 1e-6) == 1  # clamped up
    assert lrm.rank_for_param_ratio(100, 60, 5.0) == 60  # clamped to full rank
    with pytest.raises(ValueError):
        lrm.rank_for_param_ratio(100, 60, 0.0)


def test_round_rank():
    assert lrm.round_rank(13, 8, 64) == 16
    assert lrm.round_rank(11, 8, 64) == 8
    assert lrm.round_rank(12, 8, 64) == 16  # ties go up
    assert lrm.round_rank(9, 8, 64, mode="up") == 16
    assert lrm.round_rank(15, 8, 64, mode="down") == 8
    assert lrm.round_rank(2, 8, 64) == 8  # never rounds to 0
    assert lrm.round_rank(62, 8, 60) == 56  # largest multiple that fits
    assert lrm.round_rank(5, 8, 6) == 6  # even one multiple does not fit: max_rank
    assert lrm.round_rank(7, 1, 64) == 7
    with pytest.raises(ValueError):
        lrm.round_rank(0, 8, 64)
    with pytest.raises(ValueError):
        lrm.round_rank(8, 8, 64, mode="sideways")


def test_rank_zero_raises_and_rank_above_full_is_clamped():
    rng = np.random.default_rng(9)
    w = rng.standard_normal((7, 5))
    with pytest.raises(ValueError, match="at least 1"):
        lrm.truncated_svd(w, 0)
    with pytest.raises(ValueError, match="at least 1"):
        lrm.whitened_svd(w, np.eye(7), 0)
    with pytest.raises(ValueError, match="at least 1"):
        lrm.tucker2_conv(rng.standard_normal((4, 3, 3, 3)), (0, 2))
    a, b = lrm.truncated_svd(w, 99)
    assert a.shape == (7, 5) and rel(a @ b, w) <= 1e-12
    first, core, last = lrm.tucker2_conv(rng.standard_normal((4, 3, 1, 1)), (9, 9))
    assert core.shape == (3, 3, 1, 1)  # a 1x1 kernel's channel ranks cannot exceed min(Cout, Cin)
    with pytest.raises(ValueError, match="2-D"):
        lrm.truncated_svd(np.zeros(5), 1)


def test_tucker_ranks_for_ratio_keep_the_budget():
    assert lrm.tucker_ranks_for_ratio((256, 256, 3, 3), 69632 / 589824) == (64, 64)
    for shape, keep in [((64, 32, 3, 3), 0.25), ((128, 256, 5, 5), 0.1), ((16, 16, 1, 1), 0.5)]:
        r_out, r_in = lrm.tucker_ranks_for_ratio(shape, keep)
        params, _ = lrm.tucker2_cost(*shape, r_out, r_in, 1)
        assert params <= keep * math.prod(shape)


# -- tensor-train factors and costs ----------------------------------------------------------------
def test_factorize_dim():
    assert lrm.factorize_dim(768, 3) == [8, 8, 12]
    assert lrm.factorize_dim(3072, 3) == [12, 16, 16]
    assert lrm.factorize_dim(64, 2) == [8, 8]
    assert lrm.factorize_dim(13, 2) == [1, 13]
    assert lrm.factorize_dim(12, 4) == [1, 2, 2, 3]


def test_tt_matrix_picks_factors_and_caps_ranks():
    rng = np.random.default_rng(10)
    w = rng.standard_normal((64, 96))
    cores = lrm.tt_matrix(w, 4)
    assert [c.shape[1] for c in cores] == [8, 8] and [c.shape[2] for c in cores] == [8, 12]
    assert cores[0].shape[3] == 4
    full = lrm.tt_matrix(w, 10_000)
    assert rel(lrm.tt_reconstruct(full), w) <= 1e-10
    assert len(lrm.tt_matrix(rng.standard_normal((13, 8)), 4)) == 1  # a prime dim: one core
    with pytest.raises(ValueError, match="multiply"):
        lrm.tt_matrix(w, 4, in_factors=[8, 7])


def test_costs():
    # the measured rows of REFERENCES.md "What decomposition buys on ONNX Runtime's CPU EP"
    assert lrm.tucker2_cost(256, 256, 3, 3, 64, 64, (56, 56))[1] == 218_365_952  # 0.22 G
    assert lrm.cp_cost(256, 256, 3, 3, 128, 56 * 56)[1] == 207_929_344  # 0.21 G
    assert lrm.svd_cost(768, 3072, 192, 128) == (192 * 3840, 128 * 192 * 3840)  # 94 M MACs
    cores = [np.zeros(s) for s in [(1, 4, 12, 16), (16, 12, 16, 16), (16, 16, 16, 1)]]
    assert lrm.tt_macs(cores, 128) == 1_327_497_216  # 1328 M: TT costs more MACs than dense (302 M)
    assert lrm.tt_params(cores) == 768 + 49152 + 4096
    # stride 2: the first 1x1 Conv runs at the input's size
    p, m = lrm.tucker2_cost(8, 4, 3, 3, 2, 2, (5, 5), in_hw=(10, 10))
    assert p == 8 + 36 + 16 and m == 100 * 8 + 25 * (36 + 16)
    p, m = lrm.cp_cost(8, 4, 3, 3, 2, (5, 5), in_hw=(10, 10))
    assert p == 2 * 18 and m == 100 * 8 + 5 * 10 * 6 + 25 * (6 + 16)


def test_numpy_tucker_and_cp_match_tensorly_on_a_small_kernel():
    """The hand-written decompositions (tensorly was too slow on wide convs) against tensorly's."""
    import tensorly as tl
    from tensorly.decomposition import parafac, partial_tucker

    from onnxpress.passes.lowrank.tensor_math import cp_conv, cp_reconstruct, tucker2_conv, tucker2_reconstruct

    rng = np.random.default_rng(0)
    decay = (0.7 ** np.arange(16))[:, None, None, None] * (0.8 ** np.arange(12))[None, :, None, None]
    w = rng.standard_normal((16, 12, 3, 3)) * decay

    def rel(a):
        return float(np.linalg.norm(a - w) / np.linalg.norm(w))

    ours = rel(tucker2_reconstruct(*tucker2_conv(w, (6, 5))))
    (core, factors), _ = partial_tucker(tl.tensor(w), rank=[6, 5], modes=[0, 1], n_iter_max=50, init="svd")
    assert ours == pytest.approx(rel(tl.tenalg.multi_mode_dot(core, factors, modes=[0, 1])), rel=1e-6)
    ours = rel(cp_reconstruct(*cp_conv(w, 8)))
    reference = rel(tl.cp_to_tensor(parafac(tl.tensor(w), rank=8, n_iter_max=200, init="random", random_state=0)))
    assert ours <= 1.1 * reference, (ours, reference)

"""Tensor decompositions of weights: Tucker-2 and CP of Conv kernels, tensor-train matrices (MPO).

numpy only (Tucker-2 by HOSVD + HOOI and CP by ALS are written out here: tensorly's general
routines form Khatri–Rao products and full SVDs that took minutes on 512-channel kernels, and
importing it costs ~0.4 s). Import these through
`onnxpress.passes.lowrank.math`, which re-exports them beside the SVD family; the shared checks
and conversions (`_as64`, `_check_conv`, ...) are defined there.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np

from onnxpress.passes.lowrank.math import HW, _area, _as64, _check_conv, _check_matrix, _check_rank, _dtype_of, _svd

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------
# Tucker-2 and CP of Conv kernels


def tucker_ranks_for_ratio(w_shape: Sequence[int], keep: float) -> tuple[int, int]:
    """(r_out, r_in) proportional to (Cout, Cin) such that the Tucker-2 chain keeps at most
    `keep` of the kernel's parameters (clamped to [1, channels])."""
    c_out, c_in, kh, kw = (int(d) for d in w_shape)
    if not keep > 0.0:
        raise ValueError(f"keep must be positive, got {keep}")
    # With r_out = ρ·Cout and r_in = ρ·Cin the chain has ρ·(Cin² + Cout²) + ρ²·Cout·Cin·kh·kw
    # parameters; take the positive root of "that = keep·Cout·Cin·kh·kw" and floor the ranks.
    a = c_out * c_in * kh * kw
    b = c_in * c_in + c_out * c_out
    rho = (math.sqrt(b * b + 4.0 * a * a * keep) - b) / (2.0 * a)
    r_out = max(1, min(c_out, math.floor(rho * c_out + 1e-9)))
    r_in = max(1, min(c_in, math.floor(rho * c_in + 1e-9)))
    return r_out, r_in


def tucker_ranks_by_spectra(w: np.ndarray, keep: float, align: int = 1) -> tuple[int, int]:
    """(r_out, r_in) whose HOSVD keeps the most of the kernel within `keep` of its parameters.

    With U_out, U_in the singular vectors of the output- and input-channel unfoldings, the HOSVD
    at ranks (r_out, r_in) keeps the energy of the leading r_out × r_in block of the rotated kernel
    U_outᵀ ×₀ W ×₁ U_in, so one rotation and a 2-D cumulative sum give the exact truncation error
    of every pair. Over the ranks that are multiples of `align` (or the full channel count), the
    pair with the smallest error among those whose chain (a full-rank mode folded into the core,
    as the pass emits it) has at most `keep·Cout·Cin·kh·kw` parameters; fewer parameters break
    ties (errors equal to 1e-10). Unlike `tucker_ranks_for_ratio` this follows the kernel: a 1×3
    conv 480 → 60 keeps its 60 outputs and compresses its inputs (proportional ranks would cut the
    outputs to 8). The full ranks (Cout, Cin), which the pass's cost gate refuses, where no pair
    fits the budget.
    """
    w64 = np.asarray(w, np.float64)
    c_out, c_in, kh, kw = w64.shape
    taps = kh * kw
    u_out = _leading_vectors(w64.reshape(c_out, -1), c_out)
    u_in = _leading_vectors(np.moveaxis(w64, 1, 0).reshape(c_in, -1), c_in)
    rotated = np.tensordot(u_out.T, w64.reshape(c_out, c_in, taps), axes=1)  # [r_out, Cin, taps]
    rotated = np.einsum("riy,is->rsy", rotated, u_in, optimize=True)
    kept = np.cumsum(np.cumsum(np.sum(rotated * rotated, axis=2), axis=0), axis=1)  # kept[r-1, s-1]
    total = float(np.sum(w64 * w64)) or 1.0

    def grid(c: int) -> list[int]:
        return sorted({*range(align, c, align), c})

    budget = keep * c_out * c_in * taps
    best: tuple[float, int, int, int] | None = None
    for r_out in grid(c_out):
        for r_in in grid(c_in):
            params = r_out * r_in * taps + (r_in * c_in if r_in < c_in else 0) + (c_out * r_out if r_out < c_out else 0)
            if r_in == c_in and r_out == c_out or params > budget:
                continue
            error = round(1.0 - float(kept[r_out - 1, r_in - 1]) / total, 10)  # rounding: ties
            key = (error, params, r_out, r_in)
            if best is None or key < best:
                best = key
    return (best[2], best[3]) if best is not None else (c_out, c_in)


def _leading_vectors(m: np.ndarray, rank: int) -> np.ndarray:
    """The `rank` leading left singular vectors of `m [n, *]`, as columns, signs fixed.

    Read from the eigenvectors of the Gram `m mᵀ` (n × n: 512 × 512 for the widest ResNet conv):
    the Gram of a wide unfolding is much cheaper than its SVD, and float64 keeps the leading
    subspace accurate. Each column's largest entry is made positive, so the result does not
    depend on the LAPACK build's sign choices.
    """
    gram = m @ m.T
    _, vecs = np.linalg.eigh(0.5 * (gram + gram.T))
    lead = vecs[:, ::-1][:, :rank]
    signs = np.sign(lead[np.argmax(np.abs(lead), axis=0), np.arange(lead.shape[1])])
    signs[signs == 0] = 1.0
    return lead * signs


def tucker2_conv(
    w: np.ndarray, ranks: tuple[int, int], n_iter_max: int = 5, tol: float = 1e-6
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Tucker-2 of a Conv kernel on its channel modes, as a chain of three Convs.

    Returns `first [r_in, Cin, 1, 1]`, `core [r_out, r_in, kh, kw]`, `last [Cout, r_out, 1, 1]`:
    Conv1x1(first) → Conv k×k(core, the original stride / pads / dilation) → Conv1x1(last, + bias)
    equals Conv(W) up to the truncation. HOSVD (the leading singular vectors of each channel
    unfolding), then at most `n_iter_max` HOOI sweeps (0: HOSVD only), stopping early when a
    sweep lowers the relative error by less than `tol`. Deterministic, no random start; a
    512×512×3×3 kernel takes 0.3 s (HOSVD) to a few seconds (5 sweeps) in float64 on one core
    (tensorly's `partial_tucker` took minutes). Ranks are `(r_out, r_in)`, each clamped to what the unfolding can carry.
    """
    w64 = _check_conv(w)
    c_out, c_in, kh, kw = w64.shape
    r_out = _check_rank(ranks[0], min(c_out, c_in * kh * kw), "Tucker rank r_out")
    r_in = _check_rank(ranks[1], min(c_in, c_out * kh * kw), "Tucker rank r_in")
    if n_iter_max < 0:
        raise ValueError(f"n_iter_max must be non-negative, got {n_iter_max}")
    by_in = np.moveaxis(w64, 1, 0)  # [Cin, Cout, kh, kw]
    u_out = _leading_vectors(w64.reshape(c_out, -1), r_out)
    u_in = _leading_vectors(by_in.reshape(c_in, -1), r_in)
    norm_sq = max(float(np.sum(w64 * w64)), 1e-300)
    error = math.inf
    for sweep in range(n_iter_max):
        # HOOI: each mode's factor from the kernel projected on the other mode's current factor.
        y = np.tensordot(w64, u_in, axes=([1], [0]))  # [Cout, kh, kw, r_in]
        u_out = _leading_vectors(y.reshape(c_out, -1), r_out)
        z = np.tensordot(u_out, w64, axes=([0], [0]))  # [r_out, Cin, kh, kw]
        u_in = _leading_vectors(np.moveaxis(z, 1, 0).reshape(c_in, -1), r_in)
        core = np.tensordot(z, u_in, axes=([1], [0]))  # [r_out, kh, kw, r_in]
        # The factors are orthonormal: ‖W − Ŵ‖² = ‖W‖² − ‖core‖².
        new_error = math.sqrt(max(norm_sq - float(np.sum(core * core)), 0.0) / norm_sq)
        converged = error - new_error < tol
        error = new_error
        if converged:
            logger.debug("tucker2_conv: converged after %d HOOI sweep(s), error %.4g", sweep + 1, error)
            break
    core = np.tensordot(np.tensordot(u_out, w64, axes=([0], [0])), u_in, axes=([1], [0]))  # [r_out, kh, kw, r_in]
    core = np.moveaxis(core, 3, 1)
    dtype = _dtype_of(w)
    first = np.ascontiguousarray(u_in.T).reshape(r_in, c_in, 1, 1)
    last = np.ascontiguousarray(u_out).reshape(c_out, r_out, 1, 1)
    return first.astype(dtype), core.astype(dtype), last.astype(dtype)


def tucker2_reconstruct(first: np.ndarray, core: np.ndarray, last: np.ndarray) -> np.ndarray:
    """The kernel `[Cout, Cin, kh, kw]` the Tucker-2 chain computes."""
    # Two pairwise contractions: a plain einsum over all five indices is O(Cout·r_out·r_in·k²·Cin)
    # (minutes for a 512-channel kernel).
    inner = np.tensordot(_as64(core), _as64(first)[:, :, 0, 0], axes=([1], [0]))  # [r_out, kh, kw, Cin]
    full = np.tensordot(_as64(last)[:, :, 0, 0], inner, axes=([1], [0]))  # [Cout, kh, kw, Cin]
    return np.ascontiguousarray(np.moveaxis(full, 3, 1))


def tucker2_cost(
    c_out: int, c_in: int, kh: int, kw: int, r_out: int, r_in: int, out_hw: HW, in_hw: HW | None = None
) -> tuple[int, int]:
    """(params, MACs) of the Tucker-2 chain (bias not counted).

    `out_hw` is the output's spatial size (H·W or (H, W)); the first 1x1 Conv runs at the input's
    size `in_hw`, which defaults to `out_hw` (stride 1, 'same' padding).
    """
    out_area = _area(out_hw)
    in_area = out_area if in_hw is None else _area(in_hw)
    params = r_in * c_in + r_out * r_in * kh * kw + c_out * r_out
    macs = in_area * c_in * r_in + out_area * (r_out * r_in * kh * kw + c_out * r_out)
    return params, macs


def _cp_init(w64: np.ndarray, rank: int, seed: int) -> list[np.ndarray]:
    """Starting factors: the leading singular vectors of the unfoldings where the mode is wide
    enough, seeded Gaussian columns for the rest (a 3-tap mode cannot hold 64 directions)."""
    rng = np.random.default_rng(seed)
    factors = []
    for mode, dim in enumerate(w64.shape):
        unfolding = np.moveaxis(w64, mode, 0).reshape(dim, -1)
        lead = _leading_vectors(unfolding, min(rank, dim))
        extra = rng.standard_normal((dim, rank - lead.shape[1])) / math.sqrt(dim)
        factors.append(np.concatenate([lead, extra], axis=1))
    return factors


def _cp_solve(mttkrp: np.ndarray, grams: Sequence[np.ndarray]) -> np.ndarray:
    """The ALS update `F = M · V⁻¹`, V the Hadamard product of the other factors' Grams
    (slightly damped: with more terms than a mode has entries, V can be singular)."""
    v = np.prod(np.stack(grams), axis=0)
    damp = 1e-10 * max(float(np.trace(v)) / v.shape[0], 1e-300)
    return np.linalg.solve(v + damp * np.eye(v.shape[0]), mttkrp.T).T


def cp_conv(
    w: np.ndarray, rank: int, seed: int = 0, n_iter_max: int = 25, tol: float = 1e-7
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Rank-`rank` CP of a Conv kernel, as Conv1x1 → depthwise kh×1 → depthwise 1×kw → Conv1x1.

    Returns `pw_in [R, Cin, 1, 1]`, `vertical [R, 1, kh, 1]`, `horizontal [R, 1, 1, kw]` (both
    depthwise: group = R) and `pw_out [Cout, R, 1, 1]`, with the CP weights λ folded into
    `pw_out` (the other factors' columns have unit norm). The vertical Conv takes the height part
    of the stride / pads / dilation, the horizontal one the width part.

    Alternating least squares in numpy, at most `n_iter_max` sweeps, stopping when a sweep lowers
    the relative error by less than `tol`. The start is the leading singular vectors of the
    channel unfoldings, padded with columns drawn from `seed` (so `seed` matters where the rank
    exceeds a mode's size, as it always does for the 3-tap modes). The sweeps contract the kernel
    with one factor at a time (the cost of a few MatMuls of the kernel's size) instead of forming
    Khatri–Rao products of the other modes: 10 sweeps at R = 64 on a 512×512×3×3 kernel take
    about a second, tensorly's `parafac` took 80 s. CP has no closed form, so the result is an
    approximation even at the true rank.
    """
    w64 = _check_conv(w)
    c_out, c_in, kh, kw = w64.shape
    if int(rank) < 1:
        raise ValueError(f"CP rank must be at least 1, got {rank}")
    rank = int(rank)
    f_out, f_in, f_h, f_w = _cp_init(w64, rank, seed)
    norm_sq = max(float(np.sum(w64 * w64)), 1e-300)
    error = math.inf
    for sweep in range(max(1, n_iter_max)):
        # mode out: contract the kernel with f_in first (the big contraction), then the taps
        taps = f_h[:, None, :] * f_w[None, :, :]  # [kh, kw, R]
        m = np.einsum("ohwr,hwr->or", np.tensordot(w64, f_in, axes=([1], [0])), taps)
        f_out = _cp_solve(m, [f_in.T @ f_in, f_h.T @ f_h, f_w.T @ f_w])
        f_out /= np.maximum(np.linalg.norm(f_out, axis=0), 1e-300)
        by_out = np.tensordot(w64, f_out, axes=([0], [0]))  # [Cin, kh, kw, R]
        m = np.einsum("ihwr,hwr->ir", by_out, taps)
        f_in = _cp_solve(m, [f_out.T @ f_out, f_h.T @ f_h, f_w.T @ f_w])
        f_in /= np.maximum(np.linalg.norm(f_in, axis=0), 1e-300)
        both = np.einsum("ihwr,ir->hwr", by_out, f_in)  # the kernel against f_out and f_in
        f_h = _cp_solve(np.einsum("hwr,wr->hr", both, f_w), [f_out.T @ f_out, f_in.T @ f_in, f_w.T @ f_w])
        f_h /= np.maximum(np.linalg.norm(f_h, axis=0), 1e-300)
        m = np.einsum("hwr,hr->wr", both, f_h)
        grams = [f_out.T @ f_out, f_in.T @ f_in, f_h.T @ f_h]
        f_w = _cp_solve(m, grams)  # keeps the scale λ
        # ‖W − Ŵ‖² = ‖W‖² − 2⟨W, Ŵ⟩ + ‖Ŵ‖², all from small matrices
        inner = float(np.sum(m * f_w))
        fit_sq = float(np.sum(np.prod(np.stack(grams), axis=0) * (f_w.T @ f_w)))
        new_error = math.sqrt(max(norm_sq - 2.0 * inner + fit_sq, 0.0) / norm_sq)
        converged = error - new_error < tol
        error = new_error
        if converged:
            logger.debug("cp_conv: converged after %d sweep(s), error %.4g", sweep + 1, error)
            break
    weights = np.linalg.norm(f_w, axis=0)
    f_w = f_w / np.maximum(weights, 1e-300)
    dtype = _dtype_of(w)
    pw_in = np.ascontiguousarray(f_in.T).reshape(rank, c_in, 1, 1)
    vertical = np.ascontiguousarray(f_h.T).reshape(rank, 1, kh, 1)
    horizontal = np.ascontiguousarray(f_w.T).reshape(rank, 1, 1, kw)
    pw_out = (f_out * weights).reshape(c_out, rank, 1, 1)
    return pw_in.astype(dtype), vertical.astype(dtype), horizontal.astype(dtype), pw_out.astype(dtype)


def cp_reconstruct(pw_in: np.ndarray, vertical: np.ndarray, horizontal: np.ndarray, pw_out: np.ndarray) -> np.ndarray:
    """The kernel `[Cout, Cin, kh, kw]` the CP chain computes."""
    taps = _as64(vertical)[:, 0, :, 0][:, :, None] * _as64(horizontal)[:, 0, 0, :][:, None, :]  # [R, kh, kw]
    out, inp = _as64(pw_out)[:, :, 0, 0], _as64(pw_in)[:, :, 0, 0]
    full = np.empty((out.shape[0], inp.shape[1], *taps.shape[1:]))
    for h in range(taps.shape[1]):  # one [Cout, R] @ [R, Cin] per tap: no [R, Cin, kh, kw] temporary
        for w in range(taps.shape[2]):
            full[:, :, h, w] = (out * taps[:, h, w]) @ inp
    return full


def cp_cost(
    c_out: int, c_in: int, kh: int, kw: int, rank: int, out_hw: HW, in_hw: HW | None = None
) -> tuple[int, int]:
    """(params, MACs) of the CP chain (bias not counted).

    Sizes as in `tucker2_cost`. With (H, W) tuples for both, the vertical depthwise Conv is
    counted at its true output size H_out × W_in (it strides only in height); with areas it is
    counted at the output's size, which is exact for stride 1.
    """
    out_area = _area(out_hw)
    in_area = out_area if in_hw is None else _area(in_hw)
    mid_area = out_area
    if not isinstance(out_hw, (int, np.integer)) and in_hw is not None and not isinstance(in_hw, (int, np.integer)):
        mid_area = int(out_hw[0]) * int(in_hw[1])
    params = rank * (c_in + kh + kw + c_out)
    macs = in_area * c_in * rank + mid_area * rank * kh + out_area * (rank * kw + c_out * rank)
    return params, macs


# --------------------------------------------------------------------------------------------
# tensor-train matrix (MPO)


def _factorizations(n: int, parts: int, smallest: int) -> list[list[int]]:
    """All non-decreasing factorizations of n into `parts` factors ≥ `smallest`."""
    if parts == 1:
        return [[n]] if n >= smallest else []
    found = []
    f = smallest
    while f ** parts <= n:
        if n % f == 0:
            found += [[f, *rest] for rest in _factorizations(n // f, parts - 1, f)]
        f += 1
    return found


def factorize_dim(n: int, parts: int) -> list[int]:
    """The most balanced factorization of `n` into `parts` factors, ascending (smallest ratio of
    largest to smallest factor): 768, 3 → [8, 8, 12]; 3072, 3 → [12, 16, 16]. Factors of 1 appear
    only when n has fewer than `parts` prime factors (a prime n gives [1, ..., 1, n])."""
    if n < 1 or parts < 1:
        raise ValueError(f"need n >= 1 and parts >= 1, got n={n}, parts={parts}")
    candidates = _factorizations(n, parts, 2)
    if not candidates:
        # Not enough prime factors: pad the best shorter factorization with ones.
        for fewer in range(parts - 1, 0, -1):
            shorter = _factorizations(n, fewer, 2)
            if shorter:
                candidates = [[1] * (parts - fewer) + c for c in shorter]
                break
        else:
            return [1] * (parts - 1) + [n]
    # Most balanced first; among equals, the smaller sum of factors (smaller cores).
    return min(candidates, key=lambda c: (c[-1] / c[0], sum(c)))


def _auto_factors(k: int, n: int) -> tuple[list[int], list[int]]:
    """d from the smaller dim (≈ one core per factor of 8, 2 ≤ d ≤ 4), lowered until both dims
    split into d factors ≥ 2; d = 1 (a single core) when either dim cannot split at all."""
    target = min(4, max(2, round(math.log(max(min(k, n), 2)) / math.log(8))))
    for d in range(target, 1, -1):
        in_f, out_f = factorize_dim(k, d), factorize_dim(n, d)
        if min(in_f) >= 2 and min(out_f) >= 2:
            return in_f, out_f
    return [k], [n]


def tt_matrix(
    w: np.ndarray,
    max_rank: int,
    in_factors: Sequence[int] | None = None,
    out_factors: Sequence[int] | None = None,
) -> list[np.ndarray]:
    """Tensor-train matrix (MPO) of `W [K, N]` by TT-SVD, every bond rank capped at `max_rank`.

    Core layout: core i has shape `[r_{i-1}, m_i, n_i, r_i]` with `r_0 = r_d = 1`,
    `K = Π m_i` (`in_factors`), `N = Π n_i` (`out_factors`), both multi-indices row-major:

        W[(i_1, ..., i_d), (j_1, ..., j_d)] = G_1[0, i_1, j_1, :] @ G_2[:, i_2, j_2, :] @ ... @ G_d[:, i_d, j_d, 0]

    Factors not given are chosen by `factorize_dim` (with d = len of the given list, else
    automatically, 2–4 cores; a single core `[1, K, N, 1]` when a dim is prime). Bond i is also
    capped by the rank its unfolding can have, so the returned ranks may be below `max_rank`
    (read them from the core shapes). The cores are left-orthonormal; the scale sits in the last.
    """
    w64 = _check_matrix(w)
    k, n = w64.shape
    max_rank = _check_rank(max_rank, k * n, "TT rank")
    if in_factors is None and out_factors is None:
        in_f, out_f = _auto_factors(k, n)
    else:
        d = len(in_factors) if in_factors is not None else len(out_factors)
        in_f = list(in_factors) if in_factors is not None else factorize_dim(k, d)
        out_f = list(out_factors) if out_factors is not None else factorize_dim(n, d)
    if len(in_f) != len(out_f):
        raise ValueError(f"in_factors {in_f} and out_factors {out_f} must have the same length")
    if math.prod(in_f) != k or math.prod(out_f) != n:
        raise ValueError(f"factors {in_f} x {out_f} do not multiply to the weight's shape {k}x{n}")
    d = len(in_f)
    # [m_1..m_d, n_1..n_d] -> [m_1, n_1, m_2, n_2, ...]: each core owns one (m_i, n_i) pair.
    t = w64.reshape(*in_f, *out_f).transpose([x for i in range(d) for x in (i, d + i)])
    cores = []
    rest = t.reshape(1, -1)
    r_prev = 1
    for i in range(d - 1):
        rest = rest.reshape(r_prev * in_f[i] * out_f[i], -1)
        u, s, vt = _svd(rest)
        r = min(max_rank, int(np.count_nonzero(s > s[0] * 1e-14)) if s[0] > 0 else 1)
        cores.append(u[:, :r].reshape(r_prev, in_f[i], out_f[i], r))
        rest = s[:r, None] * vt[:r]
        r_prev = r
    cores.append(rest.reshape(r_prev, in_f[-1], out_f[-1], 1))
    dtype = _dtype_of(w)
    logger.debug("tt_matrix %dx%d: factors %s x %s, ranks %s", k, n, in_f, out_f, [c.shape[3] for c in cores[:-1]])
    return [c.astype(dtype) for c in cores]


def tt_reconstruct(cores: Sequence[np.ndarray], k: int | None = None, n: int | None = None) -> np.ndarray:
    """The matrix `[K, N]` a TT-matrix represents (layout as in `tt_matrix`); K and N, when given,
    are checked against the cores."""
    result = _as64(cores[0])[0]  # [m, n, r]
    for core in cores[1:]:
        c = _as64(core)
        rows, cols = result.shape[0] * c.shape[1], result.shape[1] * c.shape[2]
        result = np.einsum("abr,rcds->acbds", result, c).reshape(rows, cols, c.shape[3])
    if result.shape[2] != 1:
        raise ValueError(f"the last TT core must end in rank 1, got {result.shape[2]}")
    full = result[:, :, 0]
    if (k is not None and k != full.shape[0]) or (n is not None and n != full.shape[1]):
        raise ValueError(f"cores describe a {full.shape[0]}x{full.shape[1]} matrix, not {k}x{n}")
    return full


def tt_params(cores: Sequence[np.ndarray]) -> int:
    """Parameters of a TT-matrix: the cores' elements."""
    return int(sum(np.asarray(c).size for c in cores))


def tt_macs(cores: Sequence[np.ndarray], tokens: int = 1) -> int:
    """MACs of `x @ W` through the cores for `tokens` rows, contracting core 1 first.

    Before core i the state holds `tokens · n_1..n_{i-1} · r_{i-1} · m_i..m_d` numbers; core i
    contracts (r_{i-1}, m_i) into (n_i, r_i), costing `tokens · Π n_<i · Π m_>i · |core i|`. The
    middle cores dominate: at r = 16 on 768x3072 this is several times the dense MatMul, which is
    why TT trades FLOPs for parameters. Transposes and reshapes count nothing.
    """
    in_f = [int(np.shape(c)[1]) for c in cores]
    out_f = [int(np.shape(c)[2]) for c in cores]
    return int(sum(
        tokens * math.prod(out_f[:i]) * math.prod(in_f[i + 1:]) * int(np.size(c)) for i, c in enumerate(cores)
    ))

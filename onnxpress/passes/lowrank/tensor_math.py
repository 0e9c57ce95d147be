"""Tensor decompositions of weights: Tucker-2 and CP of Conv kernels, tensor-train matrices (MPO).

numpy + tensorly only (tensorly imported where it runs: it costs ~0.4 s). Import these through
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


def tucker2_conv(
    w: np.ndarray, ranks: tuple[int, int], seed: int = 0, n_iter_max: int = 5, tol: float = 1e-6
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Tucker-2 of a Conv kernel on its channel modes, as a chain of three Convs.

    Returns `first [r_in, Cin, 1, 1]`, `core [r_out, r_in, kh, kw]`, `last [Cout, r_out, 1, 1]`:
    Conv1x1(first) → Conv k×k(core, the original stride / pads / dilation) → Conv1x1(last, + bias)
    equals Conv(W) up to the truncation. HOSVD initialisation, then at most `n_iter_max` HOOI
    sweeps (tensorly `partial_tucker`). Ranks are `(r_out, r_in)`, each clamped to what the
    unfolding can carry.
    """
    w64 = _check_conv(w)
    c_out, c_in, kh, kw = w64.shape
    r_out = _check_rank(ranks[0], min(c_out, c_in * kh * kw), "Tucker rank r_out")
    r_in = _check_rank(ranks[1], min(c_in, c_out * kh * kw), "Tucker rank r_in")
    # Randomized SVD only speeds up the HOSVD initialisation (tensorly's HOOI sweeps use the
    # truncated SVD regardless); it pays for wide unfoldings at small ranks.
    small = max(r_out / c_out, r_in / c_in) <= 0.25 and min(c_out, c_in) >= 256
    import tensorly as tl
    from tensorly.decomposition import partial_tucker

    with tl.backend_context("numpy"):
        (core, (u_out, u_in)), _ = partial_tucker(
            w64, rank=[r_out, r_in], modes=[0, 1], n_iter_max=max(1, n_iter_max), init="svd",
            svd="randomized_svd" if small else "truncated_svd", tol=tol, random_state=seed,
        )
    dtype = _dtype_of(w)
    first = np.ascontiguousarray(u_in.T).reshape(r_in, c_in, 1, 1)
    last = np.ascontiguousarray(u_out).reshape(c_out, r_out, 1, 1)
    return first.astype(dtype), np.asarray(core).astype(dtype), last.astype(dtype)


def tucker2_reconstruct(first: np.ndarray, core: np.ndarray, last: np.ndarray) -> np.ndarray:
    """The kernel `[Cout, Cin, kh, kw]` the Tucker-2 chain computes."""
    return np.einsum("ob,bahw,ai->oihw", _as64(last)[:, :, 0, 0], _as64(core), _as64(first)[:, :, 0, 0])


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


def cp_conv(
    w: np.ndarray, rank: int, seed: int = 0, n_iter_max: int = 25, tol: float = 1e-7
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Rank-`rank` CP of a Conv kernel, as Conv1x1 → depthwise kh×1 → depthwise 1×kw → Conv1x1.

    Returns `pw_in [R, Cin, 1, 1]`, `vertical [R, 1, kh, 1]`, `horizontal [R, 1, 1, kw]` (both
    depthwise: group = R) and `pw_out [Cout, R, 1, 1]`, with the CP weights λ folded into
    `pw_out` (the other factors' columns have unit norm). The vertical Conv takes the height part
    of the stride / pads / dilation, the horizontal one the width part. tensorly `parafac` (ALS),
    seeded random initialisation, at most `n_iter_max` sweeps: CP has no closed form, so the
    result is an approximation even at the true rank.
    """
    w64 = _check_conv(w)
    c_out, c_in, kh, kw = w64.shape
    if int(rank) < 1:
        raise ValueError(f"CP rank must be at least 1, got {rank}")
    rank = int(rank)
    import tensorly as tl
    from tensorly.decomposition import parafac

    with tl.backend_context("numpy"):
        cp = parafac(
            w64, rank=rank, n_iter_max=max(1, n_iter_max), init="random", tol=tol,
            random_state=seed, normalize_factors=True, linesearch=True,
        )
    weights, (f_out, f_in, f_h, f_w) = np.asarray(cp.weights), [np.asarray(f) for f in cp.factors]
    dtype = _dtype_of(w)
    pw_in = np.ascontiguousarray(f_in.T).reshape(rank, c_in, 1, 1)
    vertical = np.ascontiguousarray(f_h.T).reshape(rank, 1, kh, 1)
    horizontal = np.ascontiguousarray(f_w.T).reshape(rank, 1, 1, kw)
    pw_out = (f_out * weights).reshape(c_out, rank, 1, 1)
    return pw_in.astype(dtype), vertical.astype(dtype), horizontal.astype(dtype), pw_out.astype(dtype)


def cp_reconstruct(pw_in: np.ndarray, vertical: np.ndarray, horizontal: np.ndarray, pw_out: np.ndarray) -> np.ndarray:
    """The kernel `[Cout, Cin, kh, kw]` the CP chain computes."""
    return np.einsum(
        "or,ri,rh,rw->oihw", _as64(pw_out)[:, :, 0, 0], _as64(pw_in)[:, :, 0, 0],
        _as64(vertical)[:, 0, :, 0], _as64(horizontal)[:, 0, 0, :],
    )


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

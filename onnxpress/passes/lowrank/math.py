"""The mathematics of low-rank and tensor-network decomposition, kept apart from ONNX.

Everything here takes and returns numpy arrays; nothing imports onnx or onnx_ir, so the passes in
this folder (which emit the factors as ONNX ops) and the benchmarks share one tested core. The
weight conventions are the ONNX ones: a MatMul weight is `W [K, N]` (`y = x @ W`), a Conv weight
is `W [Cout, Cin, kh, kw]` (group = 1). Work is done in float64 and every returned factor is cast
back to the weight's dtype (float64 when the weight is not a float array). Decompositions are
deterministic: tensorly runs on its numpy backend with fixed seeds.

Rank policy, the same everywhere: a rank below 1 is a caller's bug and raises `ValueError`; a
rank above what the weight can carry (`min(K, N)`, the channel count, ...) is clamped to it, and
the factor shapes tell the truth. The rank selectors (`rank_for_energy`, `rank_for_param_ratio`,
`tucker_ranks_for_ratio`, `round_rank`) always return a usable rank in `[1, max]`; whether that
rank pays is for the cost gate to say (`svd_cost`, `tucker2_cost`, `cp_cost`, `tt_macs`).

Costs count multiply-accumulates (MACs) of the emitted chain, not of the dense layer.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np

# tensorly (and the scipy it pulls in) costs ~0.4 s to import: it is imported where Tucker / CP
# run, so `optimize -O2` and every pass that never decomposes a conv does not pay for it.

__all__ = [
    "allocate_ranks",
    "asvd",
    "cp_conv",
    "cp_cost",
    "cp_reconstruct",
    "factorize_dim",
    "output_error",
    "rank_for_energy",
    "rank_for_param_ratio",
    "round_rank",
    "singular_values",
    "svd_cost",
    "svd_tail_error",
    "truncated_svd",
    "tt_macs",
    "tt_matrix",
    "tt_params",
    "tt_reconstruct",
    "tucker2_conv",
    "tucker2_cost",
    "tucker2_reconstruct",
    "tucker_ranks_for_ratio",
    "whitened_singular_values",
    "whitened_svd",
]

logger = logging.getLogger(__name__)

HW = int | tuple[int, int]


# --------------------------------------------------------------------------------------------
# helpers


def _as64(w: np.ndarray) -> np.ndarray:
    return np.asarray(w, dtype=np.float64)


def _dtype_of(w: np.ndarray) -> np.dtype:
    """The dtype results are cast back to: the weight's own when it is a float array."""
    w = np.asarray(w)
    return w.dtype if w.dtype.kind == "f" else np.dtype(np.float64)


def _check_rank(rank: int, limit: int, what: str) -> int:
    """Rank < 1 raises; rank > limit is clamped (see the module's rank policy)."""
    rank = int(rank)
    if rank < 1:
        raise ValueError(f"{what} must be at least 1, got {rank}")
    if rank > limit:
        logger.debug("%s %d clamped to %d", what, rank, limit)
        return limit
    return rank


def _check_matrix(w: np.ndarray) -> np.ndarray:
    w = _as64(w)
    if w.ndim != 2 or 0 in w.shape:
        raise ValueError(f"expected a non-empty 2-D weight [K, N], got shape {w.shape}")
    return w


def _check_conv(w: np.ndarray) -> np.ndarray:
    w = _as64(w)
    if w.ndim != 4 or 0 in w.shape:
        raise ValueError(f"expected a non-empty 4-D Conv weight [Cout, Cin, kh, kw], got shape {w.shape}")
    return w


def _fix_signs(u: np.ndarray, vt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Make each left singular vector's largest entry positive, so factors do not depend on the
    LAPACK build's sign choices."""
    if u.shape[1] == 0:
        return u, vt
    signs = np.sign(u[np.argmax(np.abs(u), axis=0), np.arange(u.shape[1])])
    signs[signs == 0] = 1.0
    return u * signs, vt * signs[:, None]


def _svd(w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    u, s, vt = np.linalg.svd(w, full_matrices=False)
    u, vt = _fix_signs(u, vt)
    return u, s, vt


def _split(u: np.ndarray, s: np.ndarray, vt: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """Rank-`rank` factors with the singular values split as sqrt into both sides."""
    root = np.sqrt(s[:rank])
    return u[:, :rank] * root, root[:, None] * vt[:rank]


def _area(hw: HW) -> int:
    return int(hw) if isinstance(hw, (int, np.integer)) else int(hw[0]) * int(hw[1])


# --------------------------------------------------------------------------------------------
# SVD and rank selection


def singular_values(w: np.ndarray) -> np.ndarray:
    """Singular values of a 2-D weight, descending, float64."""
    return np.linalg.svd(_check_matrix(w), compute_uv=False)


def truncated_svd(w: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """Best rank-`rank` approximation `W ≈ A @ B` (Eckart–Young), `A [K, r]`, `B [r, N]`.

    The singular values are split as sqrt into both factors so neither is badly scaled (that
    matters once the factors are quantized). Rank above `min(K, N)` is clamped.
    """
    w64 = _check_matrix(w)
    rank = _check_rank(rank, min(w64.shape), "SVD rank")
    a, b = _split(*_svd(w64), rank)
    dtype = _dtype_of(w)
    return a.astype(dtype), b.astype(dtype)


def svd_tail_error(s: np.ndarray, rank: int) -> float:
    """Frobenius norm of the singular values dropped at `rank`: exactly `‖W − A @ B‖_F` of the
    rank-`rank` truncated SVD. `s` must be sorted descending (as `singular_values` returns)."""
    s = _as64(s)
    if rank < 0:
        raise ValueError(f"rank must be non-negative, got {rank}")
    return float(np.sqrt(np.sum(s[rank:] ** 2)))


def rank_for_energy(s: np.ndarray, energy: float) -> int:
    """Smallest rank whose singular values keep at least `energy` of `Σ s²` (energy in (0, 1]).

    A zero matrix returns 1 (the selectors never return 0; see the module's rank policy).
    """
    if not 0.0 < energy <= 1.0:
        raise ValueError(f"energy must be in (0, 1], got {energy}")
    s = _as64(s)
    if s.size == 0:
        raise ValueError("no singular values given")
    power = np.cumsum(np.sort(s)[::-1] ** 2)
    if power[-1] <= 0.0:
        return 1
    # A relative slack so that energy=1.0 is reached despite rounding in the cumulative sum.
    rank = int(np.searchsorted(power, energy * power[-1] * (1.0 - 1e-12), side="left")) + 1
    return min(rank, s.size)


def rank_for_param_ratio(m: int, n: int, keep: float) -> int:
    """Largest rank `r` with `r·(m + n) ≤ keep·m·n`: the factors keep `keep` of the parameters.

    Clamped to `[1, min(m, n)]`: a budget below one rank still returns 1, a budget above full
    rank returns `min(m, n)` (neither pays; the cost gate says so).
    """
    if m < 1 or n < 1:
        raise ValueError(f"dims must be positive, got {m}x{n}")
    if not keep > 0.0:
        raise ValueError(f"keep must be positive, got {keep}")
    rank = math.floor(keep * m * n / (m + n) + 1e-9)
    return max(1, min(rank, m, n))


def round_rank(rank: int, multiple: int, max_rank: int, mode: str = "nearest") -> int:
    """Round `rank` to a multiple of `multiple` (hardware-friendly widths), within `[1, max_rank]`.

    `mode` is "nearest" (ties go up), "up" or "down". A result above `max_rank` falls back to the
    largest multiple that fits, and to `max_rank` itself when even `multiple` does not fit; a
    result of 0 becomes `multiple`.
    """
    if multiple < 1:
        raise ValueError(f"multiple must be at least 1, got {multiple}")
    if max_rank < 1:
        raise ValueError(f"max_rank must be at least 1, got {max_rank}")
    if rank < 1:
        raise ValueError(f"rank must be at least 1, got {rank}")
    if mode == "nearest":
        rounded = (rank + multiple // 2) // multiple * multiple
    elif mode == "up":
        rounded = -(-rank // multiple) * multiple
    elif mode == "down":
        rounded = rank // multiple * multiple
    else:
        raise ValueError(f"mode must be 'nearest', 'up' or 'down', got {mode!r}")
    rounded = max(rounded, multiple)
    if rounded > max_rank:
        rounded = max_rank // multiple * multiple or max_rank
    return int(rounded)


# --------------------------------------------------------------------------------------------
# data-aware SVD


def _damped_cholesky(gram: np.ndarray, eps: float) -> np.ndarray:
    """Lower Cholesky factor of `gram + δ·I`, δ = eps·mean(diag); δ grows until it factorizes,
    which makes a rank-deficient Gram (too few calibration tokens, dead channels) usable."""
    scale = float(np.mean(np.diag(gram)))
    if not np.isfinite(scale):
        raise ValueError("the Gram matrix has non-finite entries")
    scale = scale if scale > 0.0 else 1.0
    damp = eps * scale
    eye = np.eye(gram.shape[0])
    for _ in range(12):
        try:
            return np.linalg.cholesky(gram + damp * eye)
        except np.linalg.LinAlgError:
            damp = max(damp * 10.0, 1e-12 * scale)
    raise ValueError("the Gram matrix is not positive semi-definite, even after damping")


def whitened_svd(w: np.ndarray, gram: np.ndarray, rank: int, eps: float = 1e-6) -> tuple[np.ndarray, np.ndarray]:
    """Rank-`rank` `A @ B` minimising the output error `‖X (W − A B)‖_F`, given `gram = Xᵀ X`.

    SVD-LLM whitening: with `S` the lower Cholesky factor of the (damped) Gram, `‖X M‖_F = ‖Sᵀ M‖_F`,
    so truncating the SVD of `Sᵀ W` and un-whitening (`A = S⁻ᵀ U_r √Σ_r`) is optimal for the
    damped objective `‖X M‖² + δ‖M‖²`, δ = eps·mean(diag(gram)).
    """
    w64 = _check_matrix(w)
    g = _as64(gram)
    k = w64.shape[0]
    if g.shape != (k, k):
        raise ValueError(f"gram must be [{k}, {k}] for a weight of shape {w64.shape}, got {g.shape}")
    rank = _check_rank(rank, min(w64.shape), "SVD rank")
    chol = _damped_cholesky(0.5 * (g + g.T), eps)
    a_white, b = _split(*_svd(chol.T @ w64), rank)
    a = np.linalg.solve(chol.T, a_white)
    dtype = _dtype_of(w)
    return a.astype(dtype), b.astype(dtype)


def whitened_singular_values(w: np.ndarray, gram: np.ndarray | None = None, eps: float = 1e-6) -> np.ndarray:
    """Singular values of `Sᵀ W` (S the damped Cholesky factor of `gram = XᵀX`), descending.

    They are to the output error what plain singular values are to the weight error: the
    whitened SVD at rank r leaves `‖X (W − A B)‖² = Σ_{i≥r} σ_i²` (up to the damping) and
    `Σ σ_i² = ‖X W‖²`. Without a Gram they are the weight's own singular values.
    """
    w64 = _check_matrix(w)
    if gram is None:
        return np.linalg.svd(w64, compute_uv=False)
    g = _as64(gram)
    if g.shape != (w64.shape[0], w64.shape[0]):
        raise ValueError(f"gram must be [{w64.shape[0]}, {w64.shape[0]}] for a weight of shape {w64.shape}")
    chol = _damped_cholesky(0.5 * (g + g.T), eps)
    return np.linalg.svd(chol.T @ w64, compute_uv=False)


def allocate_ranks(
    shapes: Sequence[tuple[int, int]],
    spectra: Sequence[np.ndarray],
    keep: float,
    align: int = 1,
    min_gain: float = 0.0,
) -> list[int | None]:
    """Ranks for several layers sharing one parameter budget, chosen by measured sensitivity.

    Layer i (`W [K, N]`, dense cost K·N) at rank r costs r·(K + N) and loses the relative
    output error `e_i(r) = Σ_{j≥r} s_j² / Σ s_j²` of its spectrum `s` (whitened singular values
    for output error, plain ones for weight error). Starting from every layer dense, the step
    with the smallest error increase per parameter saved is taken until the total is at most
    `keep · Σ K·N`: a dense layer's first step goes to the largest multiple of `align` that
    saves `min_gain` of its parameters, later steps remove `align` ranks at a time (never below
    `align`). Returns one rank per layer, None for a layer left dense. Deterministic (ties go
    to the earlier layer).
    """
    import heapq

    if len(shapes) != len(spectra):
        raise ValueError("one spectrum per shape is needed")
    if not keep > 0.0:
        raise ValueError(f"keep must be positive, got {keep}")
    if align < 1:
        raise ValueError(f"align must be at least 1, got {align}")
    tails, first = [], []
    for (k, n), s in zip(shapes, spectra):
        power = np.sort(_as64(s))[::-1] ** 2
        total = float(power.sum())
        tail = np.concatenate([np.cumsum(power[::-1])[::-1], [0.0]])  # tail[r] = Σ_{j≥r}
        tails.append(tail / total if total > 0 else np.zeros_like(tail))
        r0 = math.floor((1.0 - min_gain) * k * n / (k + n) + 1e-9) // align * align
        r0 = min(r0, (min(k, n) - 1) // align * align)
        first.append(r0 if r0 >= align else None)
    ranks: list[int | None] = [None] * len(shapes)
    cost = sum(k * n for k, n in shapes)
    budget = keep * cost

    def step(i: int) -> tuple[float, int, int, int] | None:
        k, n = shapes[i]
        if ranks[i] is None:
            if first[i] is None:
                return None
            new, saved = first[i], k * n - first[i] * (k + n)
            delta = tails[i][min(new, len(tails[i]) - 1)]
        else:
            new = ranks[i] - align
            if new < align:
                return None
            saved = align * (k + n)
            t = tails[i]
            delta = t[min(new, len(t) - 1)] - t[min(ranks[i], len(t) - 1)]
        return (float(delta) / max(saved, 1), i, new, saved)

    heap = [entry for entry in (step(i) for i in range(len(shapes))) if entry is not None]
    heapq.heapify(heap)
    while cost > budget and heap:
        _, i, new, saved = heapq.heappop(heap)
        ranks[i] = new
        cost -= saved
        nxt = step(i)
        if nxt is not None:
            heapq.heappush(heap, nxt)
    return ranks


def asvd(w: np.ndarray, act_scale: np.ndarray, rank: int, alpha: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Activation-aware SVD (ASVD): scale W's input rows by `act_scale ** alpha` (act_scale =
    mean |x| per input channel), truncate, unscale. Channels with zero activity get the smallest
    positive scale present, so that nothing divides by zero."""
    w64 = _check_matrix(w)
    scale = np.abs(_as64(act_scale)).reshape(-1)
    if scale.shape[0] != w64.shape[0]:
        raise ValueError(f"act_scale must have {w64.shape[0]} entries, got {scale.shape[0]}")
    rank = _check_rank(rank, min(w64.shape), "SVD rank")
    positive = scale[scale > 0.0]
    floor = float(positive.min()) if positive.size else 1.0
    scale = np.maximum(scale, floor) ** alpha
    a_scaled, b = _split(*_svd(scale[:, None] * w64), rank)
    a = a_scaled / scale[:, None]
    dtype = _dtype_of(w)
    return a.astype(dtype), b.astype(dtype)


def output_error(w: np.ndarray, a: np.ndarray, b: np.ndarray, gram: np.ndarray) -> float:
    """Relative output error `‖X (W − A B)‖_F / ‖X W‖_F`, computed from `gram = Xᵀ X` alone."""
    w64 = _check_matrix(w)
    g = _as64(gram)
    delta = w64 - _as64(a) @ _as64(b)
    num = max(float(np.sum((g @ delta) * delta)), 0.0)
    den = max(float(np.sum((g @ w64) * w64)), 0.0)
    if den == 0.0:
        return 0.0 if num == 0.0 else math.inf
    return math.sqrt(num / den)


def svd_cost(k: int, n: int, rank: int, tokens: int = 1) -> tuple[int, int]:
    """(params, MACs) of `x @ A @ B` for `tokens` rows (bias not counted)."""
    return rank * (k + n), tokens * rank * (k + n)


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

"""The mathematics of low-rank and tensor-network decomposition, kept apart from ONNX.

Everything here takes and returns numpy arrays; nothing imports onnx or onnx_ir, so the passes in
this folder (which emit the factors as ONNX ops) and the benchmarks share one tested core. The
weight conventions are the ONNX ones: a MatMul weight is `W [K, N]` (`y = x @ W`), a Conv weight
is `W [Cout, Cin, kh, kw]` (group = 1). Work is done in float64 and every returned factor is cast
back to the weight's dtype (float64 when the weight is not a float array). Decompositions are
deterministic: no random start except the seeded columns of the CP initialisation.

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


__all__ = [
    "DEFAULT_DAMPING",
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
    "tucker_ranks_by_spectra",
    "tucker_ranks_for_ratio",
    "whitened_singular_values",
    "whitened_svd",
]

logger = logging.getLogger(__name__)

HW = int | tuple[int, int]

#: The low-rank passes' default whitening damping (`damping=`, as a fraction of mean(diag XᵀX)).
#: The functions below default to a negligible 1e-6 (the exact optimum on the given Gram); the
#: passes damp more because their Gram comes from a few calibration feeds, and the directions
#: those never excite are the ones a fully whitened SVD drops first (see `whitened_svd`).
DEFAULT_DAMPING = 0.03


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

    `eps` moves the fit from pure whitening (eps → 0: the best rank-r fit to the calibration
    inputs, SVD-LLM) towards the plain SVD (eps → ∞: the best fit to the weight). On inputs
    unlike the calibration set, some damping generalises better. all-MiniLM-L6-v2's FFN at −25 %,
    evaluated on 64 hand-written sentences (mean embedding cosine at eps = 1e-6 / 0.03 / 0.1 / 0.3):
    calibrated on template paragraphs 0.874 / 0.884 / 0.885 / 0.884 (1: 0.876); calibrated on 128
    other hand-written sentences 0.944 / 0.944 / 0.942 / 0.935. The passes' default,
    `DEFAULT_DAMPING` = 0.03, takes most of the first gain and little of the second loss.
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


# Tucker-2, CP and tensor-train live in `tensor_math` (they share the helpers above); re-exported
# here so `math` stays the one place the passes import the factorisations from.
from onnxpress.passes.lowrank.tensor_math import (  # noqa: E402
    cp_conv,
    cp_cost,
    cp_reconstruct,
    factorize_dim,
    tt_macs,
    tt_matrix,
    tt_params,
    tt_reconstruct,
    tucker2_conv,
    tucker2_cost,
    tucker2_reconstruct,
    tucker_ranks_by_spectra,
    tucker_ranks_for_ratio,
)

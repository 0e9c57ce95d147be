"""Blockwise weight quantization math: RTN, GPTQ, AWQ, and the MatMulNBits packing. No ONNX here.

A weight `W` [K, N] (ONNX MatMul layout: K inputs, N outputs) is cut into blocks of `block_size`
consecutive rows along K, one block per (row block, column): every block has its own scale (and,
asymmetric, its own zero point), so the last, shorter block needs no padding in the math.

* Symmetric codes are signed, `[-2^(b-1), 2^(b-1) - 1]`, zero point 0, and the scale is *signed*:
  the block's value of largest magnitude `m` maps exactly onto the extra code, `scale = m / -2^(b-1)`
  (negative when `m` is positive), as ONNX Runtime's RTN does. The step is |m| / 8 at 4 bits instead
  of the |m| / 7 a positive scale needs when `m` is positive, and `m` itself is exact. The price: a
  value of the other sign beyond 7.5 steps saturates at code 7, so the error bound is
  `max(|scale| / 2, |w| - (2^(b-1) - 1)·|scale|)`, at most one step, instead of half a step.
  MatMulNBits and DequantizeLinear multiply by the scale whatever its sign.
* Asymmetric codes are unsigned, `[0, 2^b - 1]`, with an integer zero point; the range is widened to
  include 0 (so the zero point is a code and the half-step bound still holds after clamping).

The data-aware methods minimise the layer's output error on calibration inputs X, read only through
the input Gram `G = XᵀX` [K, K]: `‖X(W − Ŵ)‖² = tr((W − Ŵ)ᵀ G (W − Ŵ))`.

* `gptq` quantizes row by row (one input channel at a time) and spreads each row's rounding error
  over the rows not yet quantized through the inverse Hessian's Cholesky factor (Frantar et al.,
  ICLR 2023), with lazy batch updates; a block's scale is fixed when its first row is reached.
* `awq_search` scales input channel k by `s_k = mean|x_k|^α` before quantizing (the salient
  channels get finer steps), and divides x by s at run time so the product is unchanged; α is
  searched on a grid by the Gram objective, and α = 0 is plain RTN, so the search never loses to it.

`pack_codes` and `to_matmulnbits` lay codes out the way `com.microsoft.MatMulNBits` reads them:
B [N, n_blocks, block_size·bits/8] uint8, element 2i in the low nibble for 4 bits; scales
[N·n_blocks]; zero points packed the same way per column, each column padded to whole bytes.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

__all__ = [
    "BlockQuant",
    "awq_search",
    "block_params",
    "code_range",
    "gptq",
    "output_error",
    "pack_codes",
    "quantize_rtn",
    "to_matmulnbits",
]

logger = logging.getLogger(__name__)

#: Columns GPTQ updates lazily at once (the error is propagated to the rest after each batch).
GPTQ_BATCH = 128


def code_range(bits: int, symmetric: bool) -> tuple[int, int]:
    """Smallest and largest code: signed for symmetric, unsigned for asymmetric."""
    if symmetric:
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


@dataclasses.dataclass
class BlockQuant:
    """Codes, scales and zero points of one [K, N] weight quantized in blocks along K."""

    codes: np.ndarray  # [K, N] int32; signed (symmetric) or unsigned (asymmetric)
    scale: np.ndarray  # [n_blocks, N] float64
    zero_point: np.ndarray | None  # [n_blocks, N] int32; None when symmetric
    bits: int
    block_size: int

    @property
    def symmetric(self) -> bool:
        return self.zero_point is None

    @property
    def shape(self) -> tuple[int, int]:
        return self.codes.shape  # type: ignore[return-value]

    @property
    def n_blocks(self) -> int:
        return self.scale.shape[0]

    def expand(self, per_block: np.ndarray) -> np.ndarray:
        """A [n_blocks, N] array repeated to [K, N] (the last block may be short)."""
        return np.repeat(per_block, self.block_size, axis=0)[: self.shape[0]]

    def dequantize(self) -> np.ndarray:
        zp = 0 if self.zero_point is None else self.expand(self.zero_point)
        return (self.codes - zp) * self.expand(self.scale)

    def unsigned_codes(self) -> tuple[np.ndarray, np.ndarray]:
        """(codes, zero points) shifted to unsigned storage, as MatMulNBits wants them."""
        if self.zero_point is not None:
            return self.codes, self.zero_point
        offset = 1 << (self.bits - 1)
        return self.codes + offset, np.full(self.scale.shape, offset, dtype=np.int32)


def _blocks(w: np.ndarray, block_size: int, fill: float = 0.0) -> np.ndarray:
    """[K, N] -> [n_blocks, block_size, N], the last block padded with `fill`."""
    k, n = w.shape
    n_blocks = -(-k // block_size)
    padded = np.full((n_blocks * block_size, n), fill, dtype=np.float64)
    padded[:k] = w
    return padded.reshape(n_blocks, block_size, n)


def block_params(lo: np.ndarray, hi: np.ndarray, bits: int, symmetric: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """Scales (and zero points when asymmetric) for blocks whose values span [lo, hi]."""
    qmin, qmax = code_range(bits, symmetric)
    lo = np.minimum(np.asarray(lo, dtype=np.float64), 0.0)
    hi = np.maximum(np.asarray(hi, dtype=np.float64), 0.0)
    if symmetric:  # signed: the largest magnitude lands on qmin exactly (see the module doc)
        scale = np.where(-lo >= hi, lo, hi) / qmin
    else:
        scale = (hi - lo) / (qmax - qmin)
    scale = np.where(scale != 0, scale, 1.0)  # an all-zero block: any scale dequantizes to 0
    if symmetric:
        return scale, None
    zero_point = np.clip(np.round(qmin - lo / scale), qmin, qmax).astype(np.int32)
    return scale, zero_point


def _codes(w: np.ndarray, scale: np.ndarray, zero_point: np.ndarray | int, qmin: int, qmax: int) -> np.ndarray:
    return np.clip(np.round(w / scale) + zero_point, qmin, qmax).astype(np.int32)


def quantize_rtn(w: np.ndarray, bits: int, block_size: int, symmetric: bool) -> BlockQuant:
    """Round to nearest, each block with its own scale (and zero point)."""
    w = np.asarray(w, dtype=np.float64)
    k, n = w.shape
    blocks = _blocks(w, block_size)
    scale, zero_point = block_params(blocks.min(axis=1), blocks.max(axis=1), bits, symmetric)
    qmin, qmax = code_range(bits, symmetric)
    zp = 0 if zero_point is None else zero_point[:, None, :]
    codes = _codes(blocks, scale[:, None, :], zp, qmin, qmax).reshape(-1, n)[:k]
    return BlockQuant(codes, scale, zero_point, bits, block_size)


def output_error(w: np.ndarray, w_hat: np.ndarray, gram: np.ndarray) -> float:
    """‖X(W − Ŵ)‖² from the input Gram G = XᵀX."""
    delta = np.asarray(w, dtype=np.float64) - np.asarray(w_hat, dtype=np.float64)
    return float(np.einsum("ij,ij->", delta, gram @ delta))


# ----------------------------------------------------------------------------------------------
# GPTQ
# ----------------------------------------------------------------------------------------------
def _inverse_cholesky(gram: np.ndarray, damp: float) -> np.ndarray:
    """Upper Cholesky factor of (G + λI)⁻¹, λ = damp · mean(diag G), increasing λ if needed."""
    k = gram.shape[0]
    h = np.array(gram, dtype=np.float64)
    base = float(np.mean(np.diag(h))) or 1.0
    for attempt in range(6):
        damped = h + (damp * 10**attempt) * base * np.eye(k)
        try:
            lower = np.linalg.cholesky(damped)
            inv = np.linalg.inv(lower)  # L⁻¹; (LLᵀ)⁻¹ = L⁻ᵀL⁻¹
            hinv = inv.T @ inv
            return np.linalg.cholesky(hinv).T
        except np.linalg.LinAlgError:
            logger.debug("GPTQ Hessian not positive definite with damp %g; retrying", damp * 10**attempt)
    raise np.linalg.LinAlgError("GPTQ: the damped input Hessian is not positive definite")


def gptq(w: np.ndarray, gram: np.ndarray, bits: int, block_size: int, symmetric: bool,
         damp: float = 0.01) -> BlockQuant:
    """GPTQ with the block grid of `quantize_rtn`: rows of W [K, N] quantized in order, each
    row's error compensated on the later rows through the inverse of G + λI."""
    w = np.array(w, dtype=np.float64)
    k, n = w.shape
    gram = np.array(gram, dtype=np.float64)
    dead = np.diag(gram) <= 0  # inputs that are always zero: their rows do not matter
    gram[dead, dead] = 1.0
    w[dead, :] = 0.0
    u = _inverse_cholesky(gram, damp)
    qmin, qmax = code_range(bits, symmetric)
    n_blocks = -(-k // block_size)
    scale = np.ones((n_blocks, n))
    zero_point = None if symmetric else np.zeros((n_blocks, n), dtype=np.int32)
    codes = np.zeros((k, n), dtype=np.int32)
    for start in range(0, k, GPTQ_BATCH):
        end = min(start + GPTQ_BATCH, k)
        errors = np.zeros((end - start, n))
        for i in range(start, end):
            b = i // block_size
            if i % block_size == 0:  # the block's parameters come from its rows as updated so far
                rows = w[i : min(i + block_size, k)]
                s, z = block_params(rows.min(axis=0), rows.max(axis=0), bits, symmetric)
                scale[b] = s
                if zero_point is not None:
                    zero_point[b] = z
            zp = 0 if zero_point is None else zero_point[b]
            codes[i] = _codes(w[i], scale[b], zp, qmin, qmax)
            err = (w[i] - (codes[i] - zp) * scale[b]) / u[i, i]
            w[i + 1 : end] -= np.outer(u[i, i + 1 : end], err)
            errors[i - start] = err
        w[end:] -= u[start:end, end:].T @ errors
    return BlockQuant(codes, scale, zero_point, bits, block_size)


# ----------------------------------------------------------------------------------------------
# AWQ
# ----------------------------------------------------------------------------------------------
def awq_search(w: np.ndarray, mean_abs: np.ndarray, gram: np.ndarray, bits: int, block_size: int,
               symmetric: bool, grid: int = 20) -> tuple[np.ndarray, BlockQuant, float]:
    """(s [K], codes of diag(s)·W, output error) for the best α in {0, 1/grid, ..., 1}.

    The layer then computes `(x / s) · dequant(codes)`; α = 0 (s = 1) is plain RTN.
    """
    w = np.asarray(w, dtype=np.float64)
    act = np.maximum(np.asarray(mean_abs, dtype=np.float64), 1e-8)
    best: tuple[float, np.ndarray, BlockQuant] | None = None
    for step in range(grid + 1):
        alpha = step / grid
        s = act**alpha
        s = s / np.sqrt(s.max() * s.min())  # centre the scales around 1 (keeps codes well-conditioned)
        quant = quantize_rtn(w * s[:, None], bits, block_size, symmetric)
        error = output_error(w, quant.dequantize() / s[:, None], gram)
        if best is None or error < best[0]:
            best = (error, s, quant)
    assert best is not None
    return best[1], best[2], best[0]


# ----------------------------------------------------------------------------------------------
# MatMulNBits layout
# ----------------------------------------------------------------------------------------------
def pack_codes(codes: np.ndarray, bits: int) -> np.ndarray:
    """Unsigned codes [..., L] -> uint8 [..., ceil(L·bits/8)], first element in the low bits."""
    codes = np.asarray(codes).astype(np.uint8)
    if bits == 8:
        return codes
    per_byte = 8 // bits
    length = codes.shape[-1]
    padded_len = -(-length // per_byte) * per_byte
    padded = np.zeros((*codes.shape[:-1], padded_len), dtype=np.uint8)
    padded[..., :length] = codes
    grouped = padded.reshape(*codes.shape[:-1], -1, per_byte)
    packed = np.zeros(grouped.shape[:-1], dtype=np.uint8)
    for j in range(per_byte):
        packed |= (grouped[..., j] & ((1 << bits) - 1)) << (j * bits)
    return packed


def to_matmulnbits(quant: BlockQuant) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(B uint8 [N, n_blocks, blob], scales [N·n_blocks] float64, zero points uint8 or None).

    Zero points are left out when they are all the op's default, 2^(bits-1) (symmetric weights).
    """
    if quant.bits not in (2, 4, 8):
        raise ValueError("MatMulNBits takes 2, 4 or 8 bits")
    codes, zero_point = quant.unsigned_codes()
    k, n = quant.shape
    n_blocks = quant.n_blocks
    padded = np.empty((n_blocks * quant.block_size, n), dtype=np.int32)
    padded[:k] = codes
    padded[k:] = zero_point[-1]  # padding rows dequantize to 0
    per_column = padded.T.reshape(n, n_blocks, quant.block_size)
    b = pack_codes(per_column, quant.bits)
    scales = np.ascontiguousarray(quant.scale.T).reshape(-1)
    if quant.symmetric:
        return b, scales, None
    zp = pack_codes(np.ascontiguousarray(zero_point.T), quant.bits).reshape(-1)
    return b, scales, zp

"""Per-tensor ranges from streamed values: the result type and the two-pass histogram reduction.

`TensorRange` is what calibration returns for one tensor. `_FirstPass` keeps min / max and an
exponent histogram of |x| over the feeds (sentinels and mask clusters are found there);
`_SecondPass` builds the fine histogram that Percentile and Entropy (KL) thresholds are read
from (`histogram_quantile`, `entropy_threshold`); `_finish` turns both into a range. The driving
loop over feeds lives in `calibration.py`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

from onnxpress.passes.quantize.range_cache import decode_array, encode_array

#: Quantized levels the entropy search compares against (TensorRT: 128, the positive int8 levels).
ENTROPY_LEVELS = 128
# float32 bit layout: the top 9 bits are the sign and the biased exponent; exponent 255 is inf/NaN.
_EXP_BITS = 23
_EXP_MAX = 255
_BIAS = 127
#: Octaves between the 99.99th percentile of |x| and a sentinel (2^14 ≈ 1.6e4: "> 1e4×").
_SENTINEL_OCTAVES = 14
_SENTINEL_PERCENTILE = 0.9999
#: A gap-separated cluster is a mask only if it is this large and leaves this share of values below.
_MASK_MIN_MAGNITUDE = 1e3
_MASK_MIN_BULK = 0.01


# ----------------------------------------------------------------------------------------------
# The result
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass
class TensorRange:
    """The calibrated range of one value.

    `min`/`max` are the data's range under `method` (not widened to include 0: that is the QDQ
    inserter's business). `histogram` / `bin_edges` are the histogram the method used: signed over
    the kept range for percentile, of nonzero |x| over [0, max |x|] for entropy, None for minmax and for
    constant tensors. `num_samples` counts the feeds seen. `flags`: "sentinel" (values excluded,
    see the module doc; `sentinels` counts them), "nan", "constant" (min == max), "empty" (no finite
    values seen). `num_values` counts the elements the range was measured on.
    """

    name: str
    min: float
    max: float
    method: str
    percentile: float | None
    num_samples: int
    histogram: np.ndarray | None = None
    bin_edges: np.ndarray | None = None
    flags: tuple[str, ...] = ()
    num_values: int = 0
    sentinels: int = 0

    def to_json(self) -> dict[str, Any]:
        obj: dict[str, Any] = {
            "min": self.min, "max": self.max, "method": self.method, "percentile": self.percentile,
            "num_samples": self.num_samples, "flags": list(self.flags),
            "num_values": self.num_values, "sentinels": self.sentinels,
        }
        if self.histogram is not None and self.bin_edges is not None:
            obj["histogram"] = encode_array(self.histogram)
            obj["bin_edges"] = encode_array(self.bin_edges)
        return obj

    @classmethod
    def from_json(cls, name: str, obj: Mapping[str, Any]) -> "TensorRange":
        has_hist = "histogram" in obj and "bin_edges" in obj
        return cls(
            name=name, min=float(obj["min"]), max=float(obj["max"]), method=str(obj["method"]),
            percentile=None if obj.get("percentile") is None else float(obj["percentile"]),
            num_samples=int(obj["num_samples"]),
            histogram=decode_array(obj["histogram"]) if has_hist else None,
            bin_edges=decode_array(obj["bin_edges"]) if has_hist else None,
            flags=tuple(obj.get("flags", ())), num_values=int(obj.get("num_values", 0)),
            sentinels=int(obj.get("sentinels", 0)),
        )


# ----------------------------------------------------------------------------------------------
# Histogram math (pure functions of a histogram; tested against numpy)
# ----------------------------------------------------------------------------------------------
def histogram_quantile(counts: np.ndarray, edges: np.ndarray, q: float) -> float:
    """The q-quantile (0 ≤ q ≤ 1) of histogrammed data, linear inside the bin that holds it."""
    cdf = np.cumsum(counts, dtype=np.float64)
    total = cdf[-1] if len(cdf) else 0.0
    if total <= 0:
        return float(edges[0])
    target = q * total
    i = int(min(np.searchsorted(cdf, target, side="left"), len(counts) - 1))
    before = cdf[i - 1] if i > 0 else 0.0
    frac = (target - before) / counts[i] if counts[i] > 0 else 0.0
    return float(edges[i] + min(max(frac, 0.0), 1.0) * (edges[i + 1] - edges[i]))


#: Tail fractions (of all values) `mse_range` may clip on each side.
MSE_TAILS = (0.0, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2)


def mse_range(counts: np.ndarray, edges: np.ndarray, levels: int = 256) -> tuple[float, float]:
    """The clipping range with the least quantization error of histogrammed data (signed histogram).

    Candidates clip each tail at one of MSE_TAILS; each is widened to include 0 (as the quantizer
    does) and scored by Σ count · (centre − dequantize(quantize(centre)))² over the bins, with
    `levels` uniform steps (rounding inside the range, clipping outside it). Where tails are long a
    tighter range wins (fine steps for the bulk); where they matter a wider one does.
    """
    counts = np.asarray(counts, np.float64)
    centres = (np.asarray(edges[:-1], np.float64) + np.asarray(edges[1:], np.float64)) / 2
    lows = sorted({histogram_quantile(counts, edges, t) for t in MSE_TAILS})
    highs = sorted({histogram_quantile(counts, edges, 1.0 - t) for t in MSE_TAILS})
    best, best_error = (float(edges[0]), float(edges[-1])), np.inf
    for low in lows:
        for high in highs:
            lo, hi = min(low, 0.0), max(high, 0.0)
            if hi <= lo:
                continue
            step = (hi - lo) / (levels - 1)
            zero = np.rint(-lo / step)
            q = np.clip(np.rint(centres / step) + zero, 0, levels - 1)
            error = float((counts * (centres - (q - zero) * step) ** 2).sum())
            if error < best_error:
                best, best_error = (low, high), error
    return best


def reclip(rng: "TensorRange", method: str, percentile: float | None = None) -> "TensorRange":
    """The same tensor's range under another clipping rule, from its signed histogram (no new pass).

    `method` is "percentile" (with `percentile`) or "mse"; a range without a signed histogram
    (minmax, entropy, constants) is returned unchanged.
    """
    if rng.histogram is None or rng.bin_edges is None or rng.method not in ("percentile", "mse"):
        return rng
    lo, hi = float(rng.bin_edges[0]), float(rng.bin_edges[-1])
    if method == "mse":
        low, high = mse_range(rng.histogram, rng.bin_edges)
    else:
        tail = (100.0 - float(percentile)) / 100.0
        low = histogram_quantile(rng.histogram, rng.bin_edges, tail)
        high = histogram_quantile(rng.histogram, rng.bin_edges, 1.0 - tail)
    low, high = max(lo, low), min(hi, high)
    return dataclasses.replace(rng, min=float(min(low, high)), max=float(max(low, high)), method=method,
                               percentile=percentile if method == "percentile" else None)


def entropy_threshold(counts: np.ndarray, edges: np.ndarray, levels: int = ENTROPY_LEVELS) -> float:
    """The |x| threshold minimising KL(P ‖ Q) over the candidate clip points of an |x| histogram.

    For a clip after bin i (i = levels … n): P is the first i bins with everything beyond folded
    into bin i-1; Q spreads each of `levels` consecutive chunks of those i bins (beyond-mass
    excluded) evenly over the chunk's bins where P is nonzero. Every candidate is evaluated at once
    from prefix sums, so the cost is O(n · levels) numbers, not a Python loop over n.
    """
    counts = np.asarray(counts, dtype=np.float64)
    n = len(counts)
    total = counts.sum()
    levels = max(1, min(levels, n))
    if total <= 0 or n <= levels:
        return float(edges[-1])
    clips = np.arange(levels, n + 1)  # candidate i: keep bins [0, i)
    chunk = np.arange(levels + 1)
    bounds = (chunk[None, :] * clips[:, None]) // levels  # [m, levels+1], bounds[:, -1] == i
    starts, ends = bounds[:, :-1], bounds[:, 1:]

    positive = counts > 0
    cum = np.concatenate([[0.0], np.cumsum(counts)])
    cum_nonzero = np.concatenate([[0.0], np.cumsum(positive)])
    plogp = np.where(positive, counts * np.log(np.where(positive, counts, 1.0)), 0.0)
    cum_plogp = np.concatenate([[0.0], np.cumsum(plogp)])

    kept = cum[clips]  # mass inside the clip: Q's total
    beyond = total - kept  # folded into P's last bin
    last = counts[clips - 1]
    sums = cum[ends] - cum[starts]  # Q mass per chunk (without the folded mass)
    nonzero = cum_nonzero[ends] - cum_nonzero[starts]
    nonzero[:, -1] += (last == 0) & (beyond > 0)  # folding makes P's last bin nonzero
    p_mass = sums.copy()
    p_mass[:, -1] += beyond  # P mass per chunk

    p_last = last + beyond
    sum_plogp = cum_plogp[clips - 1] + np.where(p_last > 0, p_last * np.log(np.maximum(p_last, 1e-300)), 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        q_level = np.where(nonzero > 0, sums / np.maximum(nonzero, 1), 0.0)
        # log of Q's normalised per-bin probability; a bin where P has mass and Q none gets a tiny
        # smoothing probability instead of an infinite divergence (the candidate is heavily penalised)
        log_q = np.where(q_level > 0, np.log(np.maximum(q_level, 1e-300)) - np.log(np.maximum(kept, 1e-300))[:, None],
                         np.log(1e-12))
        cross = (p_mass * log_q).sum(axis=1)
    kl = sum_plogp / total - np.log(total) - cross / total
    kl = np.where(kept > 0, kl, np.inf)
    best = int(clips[int(np.argmin(kl))])
    return float(edges[best])


# ----------------------------------------------------------------------------------------------
# Streaming statistics
# ----------------------------------------------------------------------------------------------
def _as_float32(array: Any) -> np.ndarray | None:
    """A flat float32 view or copy of a numeric array; None for strings and other non-numbers."""
    array = np.asarray(array)
    if array.dtype == np.float32:
        return np.ascontiguousarray(array).reshape(-1)
    if array.dtype.kind not in "fiub" and "float" not in array.dtype.name:
        return None
    return np.ascontiguousarray(array, dtype=np.float32).reshape(-1)


def _exponents(x: np.ndarray) -> np.ndarray:
    return (x.view(np.uint32) >> _EXP_BITS) & _EXP_MAX


class _FirstPass:
    """Running min/max of finite values and counts per (sign, octave) of every element."""

    def __init__(self) -> None:
        self.octaves = np.zeros(2 * (_EXP_MAX + 1), dtype=np.int64)  # index: sign * 256 + exponent
        self.lo = np.inf
        self.hi = -np.inf
        self.nan = 0
        self.samples = 0
        self.unsupported = False

    def update(self, array: Any) -> None:
        self.samples += 1
        x = _as_float32(array)
        if x is None:
            self.unsupported = True
            return
        if not x.size:
            return
        counts = np.bincount(x.view(np.uint32) >> _EXP_BITS, minlength=len(self.octaves))
        self.octaves += counts
        if counts[_EXP_MAX] or counts[2 * _EXP_MAX + 1]:  # inf or NaN present
            self.nan += int(np.isnan(x).sum())
            x = x[np.isfinite(x)]
            if not x.size:
                return
        self.lo = min(self.lo, float(x.min()))
        self.hi = max(self.hi, float(x.max()))

    @property
    def nonfinite(self) -> int:
        return int(self.octaves[_EXP_MAX] + self.octaves[2 * _EXP_MAX + 1])

    def sentinel_exponent(self) -> int | None:
        """The smallest biased exponent whose magnitudes are sentinels (None: no sentinels)."""
        magnitude = self.octaves[: _EXP_MAX + 1] + self.octaves[_EXP_MAX + 1:]
        finite = magnitude[1:_EXP_MAX]  # exponents 1..254; exponent 0 holds zeros and denormals
        total = int(finite.sum())
        if not total:
            return None
        occupied = np.flatnonzero(finite) + 1
        cut = None
        # rare outliers: beyond ~1e4× the 99.99th percentile of |x|
        p_exp = int(np.searchsorted(np.cumsum(finite), _SENTINEL_PERCENTILE * total, side="left")) + 1
        if occupied[-1] >= p_exp + _SENTINEL_OCTAVES:
            cut = int(occupied[occupied >= p_exp + _SENTINEL_OCTAVES][0])
        # frequent masks: a large-magnitude cluster above an empty gap, with a real bulk below it
        below = np.cumsum(magnitude[occupied])
        for k in range(len(occupied) - 1):
            low, high = int(occupied[k]), int(occupied[k + 1])
            if (high - low >= _SENTINEL_OCTAVES and below[k] >= _MASK_MIN_BULK * total
                    and 2.0 ** (high - _BIAS) >= _MASK_MIN_MAGNITUDE):
                cut = high if cut is None else min(cut, high)
                break
        return cut

    def kept_bounds(self, cut: int) -> tuple[float, float]:
        """Bounds (within 2×) of the values below exponent `cut`, clipped to the seen range."""
        def bound(counts: np.ndarray) -> float:
            occupied = np.flatnonzero(counts[:cut])
            return 0.0 if not len(occupied) else 2.0 ** (int(occupied[-1]) + 1 - _BIAS)

        positive, negative = self.octaves[: _EXP_MAX + 1], self.octaves[_EXP_MAX + 1:]
        lo = max(self.lo, -bound(negative)) if self.lo < 0 else self.lo
        hi = min(self.hi, bound(positive)) if self.hi > 0 else self.hi
        return lo, hi


class _SecondPass:
    """A fixed-range histogram (signed, or of |x|) and the exact range of the kept values."""

    def __init__(self, lo: float, hi: float, bins: int, drop_from: int | None, magnitude: bool) -> None:
        self.drop_from = drop_from  # exponents >= this are excluded (sentinels, inf, NaN)
        self.magnitude = magnitude
        self.range = (0.0, max(abs(lo), abs(hi))) if magnitude else (lo, hi)
        self.bins = bins if bins and self.range[1] > self.range[0] else 0
        self.counts = np.zeros(self.bins, dtype=np.int64)
        self.lo = np.inf
        self.hi = -np.inf
        self.kept = 0

    def update(self, array: Any) -> None:
        x = _as_float32(array)
        if x is None or not x.size:
            return
        if self.drop_from is not None:
            x = x[_exponents(x) < self.drop_from]
            if not x.size:
                return
        self.kept += x.size
        self.lo = min(self.lo, float(x.min()))
        self.hi = max(self.hi, float(x.max()))
        if self.bins:
            # exact zeros are exact under any scale: they must not weigh on the |x| clip search
            values = np.abs(x[x != 0]) if self.magnitude else x
            self.counts += np.histogram(values, bins=self.bins, range=self.range)[0]

    def edges(self) -> np.ndarray:
        return np.linspace(self.range[0], self.range[1], self.bins + 1)


@dataclasses.dataclass
class _Settings:
    method: str
    percentile: float
    num_bins: int


def _needs_second_pass(first: _FirstPass, settings: _Settings) -> tuple[bool, int | None]:
    """(run pass 2?, exponent from which values are dropped)."""
    cut = first.sentinel_exponent()
    drop = cut if cut is not None else (_EXP_MAX if first.nonfinite else None)
    histogram = settings.method != "minmax" and first.lo < first.hi
    return histogram or drop is not None, drop


def _second_pass(first: _FirstPass, drop: int | None, settings: _Settings) -> _SecondPass:
    lo, hi = first.kept_bounds(drop) if drop is not None else (first.lo, first.hi)
    bins = 0 if settings.method == "minmax" else settings.num_bins
    return _SecondPass(lo, hi, bins, drop, magnitude=settings.method == "entropy")


def _finish(name: str, first: _FirstPass, second: _SecondPass | None, settings: _Settings) -> TensorRange:
    flags: list[str] = []
    cut = first.sentinel_exponent()
    magnitude = first.octaves[: _EXP_MAX + 1] + first.octaves[_EXP_MAX + 1:]
    sentinels = int(first.nonfinite - first.nan + (magnitude[cut:_EXP_MAX].sum() if cut is not None else 0))
    if sentinels:
        flags.append("sentinel")
    if first.nan:
        flags.append("nan")
    if second is not None:
        lo, hi, kept = second.lo, second.hi, second.kept
    else:
        lo, hi = first.lo, first.hi
        kept = int(first.octaves.sum()) - first.nonfinite
    percentile = settings.percentile if settings.method == "percentile" else None
    if not kept or not np.isfinite(lo):
        flags.append("empty")
        return TensorRange(name, 0.0, 0.0, settings.method, percentile, first.samples, flags=tuple(flags),
                           sentinels=sentinels)
    histogram = edges = None
    low, high = lo, hi
    if second is not None and second.bins and second.counts.sum():
        histogram, edges = second.counts, second.edges()
        if settings.method == "percentile":
            tail = (100.0 - settings.percentile) / 100.0
            low = max(lo, histogram_quantile(histogram, edges, tail))
            high = min(hi, histogram_quantile(histogram, edges, 1.0 - tail))
        elif settings.method == "entropy":
            threshold = entropy_threshold(histogram, edges)
            low, high = max(lo, -threshold), min(hi, threshold)
        elif settings.method == "mse":
            low, high = mse_range(histogram, edges)
            low, high = max(lo, low), min(hi, high)
    if low == high:
        flags.append("constant")
    return TensorRange(name, float(min(low, high)), float(max(low, high)), settings.method, percentile,
                       first.samples, histogram, edges, tuple(flags), kept, sentinels)

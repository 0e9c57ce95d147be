"""Calibration analysis: the value ranges that QDQ insertion turns into scales, measured streaming.

`calibrate` runs the model on the context's runner over the context's data with the wanted
intermediate values exposed as graph outputs (pruning's `iter_values`), and reduces every captured
array into small running statistics the moment it arrives; activations are never kept. Values go
in batches of at most `batch_values` names and (sizes from shape inference) `chunk_bytes` per feed,
so a model whose activations add up to gigabytes per sample holds only one batch's worth at a time.

Per batch there are at most two passes over the data:

1. running min/max, and a histogram of the float32 *binary exponents* (sign and octave of every
   element: 512 exact counters). The octave histogram finds **sentinels** — mask constants such as
   -3.4e38, -1e9, ±inf that would otherwise set the scale — and bounds the range of the rest;
2. (percentile and entropy, or when sentinels must be cut out; only the values that need it are
   exposed) a fixed-range histogram of `num_bins` bins over the pass-1 range with sentinels
   excluded, and the exact min/max of what is kept.

Methods: `minmax` (exact min/max), `percentile` (two-sided: each tail holds (100-p) % of the
values; interpolated inside a histogram bin), `entropy` (the KL-divergence threshold search of
TensorRT's int8 calibrator on the histogram of nonzero |x| — exact zeros are exact under any
scale, and a post-ReLU spike at 0 would otherwise drag the clip down — vectorised over all
candidate thresholds; any histogram works, including all-zero, constant and few-valued tensors).

Sentinels: with octave resolution, a magnitude is a sentinel when it is > ~1e4× the 99.99th
percentile of nonzero |x| (always above 2^13×, always flagged from 2^15×), or when it is at least 1e3 and sits above an
empty gap of 14 octaves with at least 1 % of the nonzero values below it (a mask that covers much
of the tensor, so the percentile itself is a mask value). NaN and ±inf are always excluded. Such
ranges carry the flag "sentinel" and exclude the sentinels; the QDQ inserter decides what to do.
A mask of -1e4 on attention scores of magnitude ~10 is within 1e4× and is *not* flagged.

Which values can be calibrated: graph inputs and outputs of main-graph nodes (run on ORT), and
initializers (reduced from the constant itself). Values that live only inside If / Loop / Scan
bodies cannot be graph outputs; they are reported uncalibrated (a warning, absent from the result).

Ranges can be cached across runs (`cache_dir`, see `range_cache`): names already cached for this
model, data and method are not recomputed, and each batch is added to the cache as it finishes,
so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import onnx_ir as ir

from onnxpress.passes.pruning.calibration import iter_values
from onnxpress.passes.quantize.range_cache import (
    RangeCache,
    data_digest,
    decode_array,
    encode_array,
    model_digest,
)

__all__ = [
    "METHODS",
    "TensorRange",
    "calibrate",
    "entropy_threshold",
    "histogram_quantile",
]

logger = logging.getLogger(__name__)

METHODS = ("minmax", "percentile", "entropy")
#: Quantized levels the entropy search compares against (TensorRT: 128, the positive int8 levels).
ENTROPY_LEVELS = 128
#: Captured bytes one runner call may return, and one batch may hold per feed. Peak memory above
#: the feeds is about 3× this (ORT's output buffers and the copies handed back coexist, and the
#: previous feed's values are still referenced while the next call runs): ~200 MB at 64 MiB.
CHUNK_BYTES = 64 << 20

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

Progress = Callable[[int, int, str], None]


def _no_progress(done: int, total: int, what: str) -> None:
    pass


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
    if low == high:
        flags.append("constant")
    return TensorRange(name, float(min(low, high)), float(max(low, high)), settings.method, percentile,
                       first.samples, histogram, edges, tuple(flags), kept, sentinels)


class _Progress:
    """Counts feeds run; the total assumes two passes for histogram methods, one for minmax, and is
    corrected as each batch decides whether it needs its second pass."""

    def __init__(self, report: Progress, feeds: int, batches: int, two_passes: bool) -> None:
        self.report, self.feeds, self.two_passes = report, feeds, two_passes
        self.done, self.total = 0, feeds * batches * (2 if two_passes else 1)
        self.label = ""

    def second_pass(self, needed: bool) -> None:
        if needed != self.two_passes:
            self.total += self.feeds if needed else -self.feeds
            self.report(self.done, self.total, f"calibrating {self.label}: min/max")

    def step(self, what: str) -> None:
        self.done += 1
        self.report(self.done, self.total, f"calibrating {self.label}: {what}")


def _reduce(
    names: Sequence[str],
    samples: Callable[[Sequence[str]], Iterable[Mapping[str, Any]]],
    settings: _Settings,
    progress: _Progress | None = None,
) -> dict[str, TensorRange]:
    """Ranges of `names` from `samples(names)`, a re-iterable stream of {name: array} per feed;
    the second pass asks only for the names that need it."""
    firsts = {name: _FirstPass() for name in names}
    for values in samples(names):
        for name in names:
            firsts[name].update(values[name])
        if progress:
            progress.step("min/max")
    seconds: dict[str, _SecondPass] = {}
    for name, first in firsts.items():
        if first.unsupported:
            continue
        needed, drop = _needs_second_pass(first, settings)
        if needed:
            seconds[name] = _second_pass(first, drop, settings)
    if progress:
        progress.second_pass(bool(seconds))
    if seconds:
        for values in samples(list(seconds)):
            for name, second in seconds.items():
                second.update(values[name])
            if progress:
                progress.step("histograms")
    return {name: _finish(name, first, seconds.get(name), settings)
            for name, first in firsts.items() if not first.unsupported}


# ----------------------------------------------------------------------------------------------
# Which values can be calibrated
# ----------------------------------------------------------------------------------------------
def _classify(model: ir.Model, names: Sequence[str]) -> tuple[list[str], list[str], list[str]]:
    """(run on ORT, reduce from the constant, inside subgraphs only); unknown names raise KeyError."""
    graph = model.graph
    inputs = {v.name for v in graph.inputs}
    produced = {v.name for node in graph for v in node.outputs if v.name}
    nested = {v.name for node in ir.traversal.RecursiveGraphIterator(graph) for v in node.outputs if v.name}
    run, constant, inside = [], [], []
    for name in names:
        if name in graph.initializers and graph.initializers[name].const_value is not None:
            constant.append(name)
        elif name in inputs or name in produced:
            run.append(name)
        elif name in nested:
            inside.append(name)
        else:
            raise KeyError(f"no value named '{name}' in the model")
    return run, constant, inside


def _static_bytes(value: ir.Value | None) -> int | None:
    """Bytes of one feed's `value` from its static shape; None when not fully known."""
    if value is None or value.shape is None or value.dtype is None:
        return None
    if not all(isinstance(d, int) and d >= 0 for d in value.shape.dims):
        return None
    try:
        itemsize = value.dtype.itemsize
    except (AttributeError, TypeError, ValueError):
        return None
    return int(np.prod(value.shape.dims, dtype=np.int64)) * int(itemsize)


def _named_values(model: ir.Model) -> dict[str, ir.Value]:
    values = {v.name: v for v in model.graph.inputs if v.name}
    values.update({v.name: v for node in model.graph for v in node.outputs if v.name})
    return values


def _feed_bytes(model: ir.Model, names: Sequence[str], feed: Mapping[str, Any]) -> dict[str, int]:
    """Estimated bytes of each named value for one feed (0 where even inference cannot tell).

    Static shapes answer directly; otherwise shapes are inferred on a clone (weights shared, not
    serialised) whose inputs take the first feed's shapes, so symbolic sequence lengths count.
    """
    values = _named_values(model)
    sizes = {name: _static_bytes(values.get(name)) for name in names}
    if any(size is None for size in sizes.values()):
        from onnxpress.ir.shapes import infer_shapes, set_input_shapes

        clone = model.clone()
        inputs = {v.name for v in clone.graph.inputs if not v.is_initializer()}
        try:
            set_input_shapes(clone, {k: list(np.shape(v)) for k, v in feed.items() if k in inputs})
            infer_shapes(clone)
        except Exception as e:  # sizing is an estimate; calibration does not depend on it
            logger.debug("shape inference for calibration batches failed: %s", e)
        inferred = _named_values(clone)
        for name, size in sizes.items():
            if size is None:
                sizes[name] = _static_bytes(inferred.get(name))
    unknown = [n for n, size in sizes.items() if size is None]
    if unknown:
        logger.debug("%d value(s) of unknown size; batched by count only: %s", len(unknown), unknown[:5])
    return {name: size or 0 for name, size in sizes.items()}


def _batches(names: Sequence[str], sizes: Mapping[str, int], count: int, budget: int) -> list[list[str]]:
    """Consecutive groups of at most `count` names and (where sizes are known) `budget` bytes per feed."""
    batches: list[list[str]] = []
    current: list[str] = []
    held = 0
    for name in names:
        size = sizes[name]
        if current and (len(current) >= count or held + size > budget):
            batches.append(current)
            current, held = [], 0
        current.append(name)
        held += size
    if current:
        batches.append(current)
    return batches


# ----------------------------------------------------------------------------------------------
# Entry point
# ----------------------------------------------------------------------------------------------
def calibrate(
    model: ir.Model,
    ctx: Any,
    names: Sequence[str],
    *,
    method: str = "percentile",
    percentile: float = 99.999,
    num_bins: int = 2048,
    limit: int | None = None,
    batch_values: int = 64,
    cache_dir: str | None = None,
    progress: Progress | None = None,
    chunk_bytes: int = CHUNK_BYTES,
) -> dict[str, TensorRange]:
    """{name: TensorRange} for the named values, measured on `ctx.runner` over `ctx.feeds(limit)`.

    Names that cannot be calibrated are absent from the result: values inside subgraphs (warned),
    non-numeric values, and everything that needs a run when the context has no runner or no data
    (warned). Unknown names raise KeyError. `progress(done, total, what)` is called after every
    feed of every pass; `total` is corrected as each batch learns whether it needs a second pass
    (a min/max batch with sentinels does; a histogram batch of constant tensors does not).
    Memory: a batch holds at most `batch_values` names and, where static shapes tell, at most
    `chunk_bytes` of one feed's values; a runner call returns at most `chunk_bytes` of values
    (more feeds per call when a feed's values are small: fewer calls are faster, each opens a
    session). Peak memory is about three times `chunk_bytes` above the feeds themselves; a larger
    budget means fewer batches, so fewer runs over the data.
    """
    if method not in METHODS:
        raise ValueError(f"unknown calibration method '{method}'; expected one of {', '.join(METHODS)}")
    if not 0.0 < percentile <= 100.0:
        raise ValueError(f"percentile must be in (0, 100], got {percentile}")
    if num_bins < 1 or batch_values < 1:
        raise ValueError("num_bins and batch_values must be at least 1")
    settings = _Settings(method, float(percentile), int(num_bins))
    names = list(dict.fromkeys(names))
    run_names, constant_names, inside = _classify(model, names)
    if inside:
        logger.warning("%d value(s) inside If/Loop/Scan bodies cannot be exposed and stay uncalibrated: %s",
                       len(inside), ", ".join(inside[:5]) + (" ..." if len(inside) > 5 else ""))
    ranges: dict[str, TensorRange] = {}

    if constant_names:
        constants = {n: model.graph.initializers[n].const_value.numpy() for n in constant_names}
        ranges.update(_reduce(constant_names, lambda _names: [constants], settings))

    feeds = ctx.feeds(limit) if run_names else []
    if run_names and (ctx.runner is None or not feeds):
        logger.warning("no %s to calibrate %d value(s) with; they stay uncalibrated",
                       "runner" if ctx.runner is None else "data", len(run_names))
        return {n: ranges[n] for n in names if n in ranges}

    cache = None
    if cache_dir is not None and run_names:
        key = {"model": model_digest(model), "data": data_digest(ctx.data, feeds), "method": method,
               "percentile": settings.percentile if method == "percentile" else None,
               "num_bins": settings.num_bins if method != "minmax" else None}
        cache = RangeCache(cache_dir, key)
        cached = cache.load()
        for name in run_names:
            if name in cached:
                try:
                    ranges[name] = TensorRange.from_json(name, cached[name])
                except (KeyError, TypeError, ValueError) as e:
                    logger.warning("range cache entry for '%s' is damaged (%s); recomputing", name, e)
        hits = sum(n in ranges for n in run_names)
        if hits:
            logger.info("range cache %s: %d of %d value(s) cached", cache.path, hits, len(run_names))

    todo = [n for n in run_names if n not in ranges]
    sizes = _feed_bytes(model, todo, feeds[0]) if todo else {}
    batches = _batches(todo, sizes, batch_values, chunk_bytes)
    if batches:
        logger.info("calibrating %d value(s) in %d batch(es) over %d feed(s) (%s)",
                    len(todo), len(batches), len(feeds), method)
    tracker = _Progress(progress or _no_progress, len(feeds), len(batches), method != "minmax")

    def samples(batch: Sequence[str]) -> Iterator[Mapping[str, Any]]:
        for (values,) in iter_values(ctx.runner, [(model, batch)], feeds, chunk_bytes=chunk_bytes):
            yield values

    for index, batch in enumerate(batches, 1):
        tracker.label = f"batch {index}/{len(batches)} ({len(batch)} values)"
        found = _reduce(batch, samples, settings, tracker)
        ranges.update(found)
        flagged = sum("sentinel" in r.flags for r in found.values())
        logger.info("calibrated %s%s", tracker.label, f"; {flagged} with sentinels excluded" if flagged else "")
        if cache is not None:
            cache.update({n: r.to_json() for n, r in found.items()})
    skipped = [n for n in run_names if n not in ranges]
    if skipped:
        logger.warning("%d non-numeric value(s) not calibrated: %s", len(skipped), ", ".join(skipped[:5]))
    return {n: ranges[n] for n in names if n in ranges}

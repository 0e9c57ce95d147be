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
2. (percentile, entropy and mse, or when sentinels must be cut out; only the values that need it are
   exposed) a fixed-range histogram of `num_bins` bins over the pass-1 range with sentinels
   excluded, and the exact min/max of what is kept.

Methods: `minmax` (exact min/max), `percentile` (two-sided: each tail holds (100-p) % of the
values; interpolated inside a histogram bin), `entropy` (the KL-divergence threshold search of
TensorRT's int8 calibrator on the histogram of nonzero |x| — exact zeros are exact under any
scale, and a post-ReLU spike at 0 would otherwise drag the clip down — vectorised over all
candidate thresholds; any histogram works, including all-zero, constant and few-valued tensors),
`mse` (per tensor, the two-sided clip — each tail at 0 to 1 % of the values — whose 8-bit
rounding plus clipping error over the signed histogram is least: `ranges.mse_range`).

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

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import onnx_ir as ir

from onnxpress.passes.pruning.calibration import iter_values
from onnxpress.passes.quantize.ranges import (
    ENTROPY_LEVELS,  # noqa: F401 - re-exported
    TensorRange,
    _finish,
    _FirstPass,
    _needs_second_pass,
    _second_pass,
    _SecondPass,
    _Settings,
    entropy_threshold,
    histogram_quantile,
)
from onnxpress.passes.quantize.range_cache import (
    RangeCache,
    data_digest,
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

METHODS = ("minmax", "percentile", "entropy", "mse")
#: Captured bytes one runner call may return, and one batch may hold per feed. Peak memory above
#: the feeds is about 3× this (ORT's output buffers and the copies handed back coexist, and the
#: previous feed's values are still referenced while the next call runs): ~200 MB at 64 MiB.
CHUNK_BYTES = 64 << 20

Progress = Callable[[int, int, str], None]


def _no_progress(done: int, total: int, what: str) -> None:
    pass


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

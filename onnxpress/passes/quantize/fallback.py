"""Float fallback driven by measured sensitivity: the few quantized tensors that hurt most stay float.

Quantizing every op the target can run in integers is fastest, but a handful of tensors (a residual
stream with one outlier channel, a detector head whose values near the decision threshold matter)
can carry most of the model's error. `choose_float_nodes` finds them in two steps:

1. **Rank** every activation tensor that got its own scale by its *local* quantization noise,
   computed from the calibration histogram without another run: the squared error of
   `dequantize(quantize(x))` at every bin (rounding inside the range, clipping outside it) over
   the tensor's variance (a noise-to-signal ratio). Tensors whose histogram is missing (minmax
   calibration, entropy's magnitude histogram) are re-measured once as percentile-100 histograms.
2. **Verify**, greedily: in that order, quantize a clone with the tensors chosen so far plus the
   next one left float (the quantized nodes that read or write them stay float), run it on the
   calibration feeds and compare every float output with the float model's (SQNR). The tensor
   stays float only if the output SQNR rose by at least `min_gain_db`; the search stops at
   `target_db`, at `max_float` tensors or after `max_trials` trials. A tensor whose nodes would
   take the float share of the quantized nodes' MACs (ir.cost) above `max_float_macs` is passed
   over: int8 is kept where it pays, so the fallback cannot cost much speed. Local noise is only a guess
   at harm (a noisy tensor late in a detector head matters, one feeding a saturating op may not):
   each trial is one session on the runner, and the choice rests on those measurements.

The chosen nodes go back to `placement.place` as `keep_float` with the reason, so the stats list
them. Nothing here mutates the model it is given: trials run on clones.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import onnx_ir as ir

from onnxpress.ir.cost import node_cost
from onnxpress.passes.quantize import placement as pl
from onnxpress.passes.quantize import quant_math as qm

__all__ = ["FallbackResult", "FloatReference", "choose_float_nodes", "output_sqnr_db", "tensor_noise_db"]

logger = logging.getLogger(__name__)

#: The reason the stats give for a node the fallback keeps float.
SENSITIVE = "sensitive (fallback)"
#: Quantize a clone with the given nodes kept float, in place.
QuantizeClone = Callable[[ir.Model, Mapping[ir.Node, str]], None]


@dataclasses.dataclass
class FallbackResult:
    """Nodes to keep float (with the reason) and what the search measured."""

    float_nodes: dict[ir.Node, str]
    stats: dict[str, Any]


# ----------------------------------------------------------------------------------------------
# Ranking
# ----------------------------------------------------------------------------------------------
def tensor_noise_db(histogram: np.ndarray, edges: np.ndarray, scale: float, zero_point: int,
                    qt: qm.QuantType) -> float:
    """10·log10(E[(x - dq(q(x)))²] / Var[x]) of a tensor given by its signed value histogram.

    Every bin is represented by its centre: with bins a fraction of a step wide the centres sample
    the rounding error evenly, and values beyond the quantized range add their clipping error."""
    counts = np.asarray(histogram, np.float64)
    total = counts.sum()
    if total <= 0:
        return -math.inf
    centres = (np.asarray(edges[:-1], np.float64) + np.asarray(edges[1:], np.float64)) / 2
    q = np.clip(np.rint(centres / scale) + zero_point, qt.qmin, qt.qmax)
    error = centres - (q - zero_point) * scale
    mean = float((counts * centres).sum() / total)
    variance = float((counts * (centres - mean) ** 2).sum() / total)
    noise = float((counts * error**2).sum() / total)
    if variance <= 0:
        return -math.inf if noise == 0 else math.inf
    if noise <= 0:
        return -math.inf
    return 10 * math.log10(noise / variance)


def rank_tensors(plan: pl.Plan, ranges: Mapping[str, Any], act_type: qm.QuantType,
                 symmetric: bool) -> list[tuple[float, ir.Value]]:
    """(noise dB, tensor) for every activation scale of the plan with a histogram, noisiest first."""
    ranked = []
    for value, (lo, hi) in plan.tensors.items():
        rng = ranges.get(value.name)
        if rng is None or getattr(rng, "histogram", None) is None or rng.method == "entropy":
            continue
        scale, zp = qm.compute_scale_zero_point(lo, hi, act_type, symmetric)
        ranked.append((tensor_noise_db(rng.histogram, rng.bin_edges, float(scale), int(zp), act_type), value))
    ranked.sort(key=lambda item: -item[0])
    return ranked


def nodes_touching(plan: pl.Plan) -> dict[ir.Value, set[ir.Node]]:
    """tensor -> the quantized nodes that must stay float for the tensor to get no Q/DQ."""
    folded_by = {}
    for node in plan.nodes:
        target = pl.fold_target(node, lambda n: False)
        if target is not None and target in plan.folded:
            folded_by[target.outputs[0]] = node
    quantized = set(plan.nodes)
    out: dict[ir.Value, set[ir.Node]] = {}
    for value in plan.tensors:
        nodes = {use.node for use in value.uses() if use.node in quantized}
        producer = folded_by.get(value) or value.producer()
        # A producer whose kernel needs its output quantized (QLinearConv, QLinearAdd, a MatMul
        # before a bias Add) goes float too; a MatMul / Gemm that fuses with a float output stays.
        if producer in quantized and (pl.RULES[producer.op_type].output_q or pl.feeds_bias_add(producer)):
            nodes.add(producer)
        out[value] = nodes
    return out


# ----------------------------------------------------------------------------------------------
# Measuring
# ----------------------------------------------------------------------------------------------
class FloatReference:
    """The float model's outputs on the trial feeds, computed once for every measured trial of the
    pass (the clipping choice of `calibration=auto` and the fallback run on the same feeds).

    `outputs()` runs the model on first use; a runner failure is kept and raised again on every
    call (as `RuntimeError` with the first line of the original message)."""

    def __init__(self, model: ir.Model, ctx: Any, samples: int) -> None:
        self.model, self.runner = model, ctx.runner
        self.feeds = ctx.feeds(samples) if ctx.runner is not None else []
        self.names = [v.name for v in model.graph.outputs if v.dtype == ir.DataType.FLOAT]
        self._outputs: list[Mapping[str, Any]] | None = None
        self._error: str | None = None

    def outputs(self) -> list[Mapping[str, Any]]:
        if self._outputs is None and self._error is None:
            try:
                self._outputs = self.runner.run(self.model, self.feeds)
            except Exception as e:  # noqa: BLE001 - reported by each caller in its own terms
                self._error = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        if self._error is not None:
            raise RuntimeError(self._error)
        return self._outputs


def output_sqnr_db(reference: Sequence[Mapping[str, Any]], results: Sequence[Mapping[str, Any]],
                   names: Sequence[str]) -> float:
    """The worst output's SQNR over all feeds: 10·log10(Σ ref² / Σ (ref - got)²)."""
    worst = math.inf
    for name in names:
        signal = noise = 0.0
        for ref, got in zip(reference, results):
            r = np.asarray(ref[name], np.float64)
            g = np.asarray(got[name], np.float64)
            if r.shape != g.shape:
                return -math.inf
            signal += float(np.sum(r * r))
            noise += float(np.sum((r - g) ** 2))
        if noise > 0:
            worst = min(worst, 10 * math.log10(max(signal, 1e-300) / noise))
    return worst


def node_keys(model: ir.Model) -> dict[ir.Node, tuple[int, int]]:
    return {node: (gi, ni) for gi, graph in enumerate(pl.graphs_of(model)) for ni, node in enumerate(graph)}


def quantized_clone(model: ir.Model, quantize_clone: QuantizeClone, keep_float: Mapping[ir.Node, str]) -> ir.Model:
    """A clone of `model` quantized by `quantize_clone`, with the clone's nodes matching `keep_float` float."""
    clone = model.clone()
    by_key = {key: node for node, key in node_keys(clone).items()}
    keys = node_keys(model)
    quantize_clone(clone, {by_key[keys[n]]: reason for n, reason in keep_float.items()})
    return clone


def choose_float_nodes(
    model: ir.Model,
    ctx: Any,
    plan: pl.Plan,
    ranges: Mapping[str, Any],
    quantize_clone: QuantizeClone,
    *,
    act_type: qm.QuantType,
    symmetric: bool,
    target_db: float,
    max_float: int,
    samples: int,
    max_trials: int = 24,
    min_gain_db: float = 0.5,
    max_float_macs: float = 1.0,
    timer: Callable[[ir.Model, ir.Model], float] | None = None,
    max_slowdown: float = 0.05,
    reference: FloatReference | None = None,
) -> FallbackResult:
    """Tensors (noisiest first, kept only where a measured trial gains) whose nodes stay float, chosen
    greedily until the output SQNR reaches `target_db` or a budget runs out.

    With a `timer` (latency of a clone relative to another, measured on the target), a tensor is
    also kept only while the model with every chosen tensor float stays within `max_slowdown` of
    the all-quantized one: a float island costs Quantize / Dequantize passes over its tensors and
    breaks the runtime's integer fusions, which MACs do not show. `reference`: the float outputs
    on `samples` feeds, when the caller already has them."""
    float_ref = reference if reference is not None else FloatReference(model, ctx, samples)
    feeds, names = float_ref.feeds, float_ref.names
    stats: dict[str, Any] = {"target_db": target_db, "samples": len(feeds)}
    if not feeds or not names or ctx.runner is None:
        stats["skipped"] = "no feeds or no float outputs"
        return FallbackResult({}, stats)
    try:
        reference_outputs = float_ref.outputs()
    except RuntimeError as e:  # a model the runner cannot take is quantized without fallback
        stats["skipped"] = f"the runner failed on the float model: {e}"
        return FallbackResult({}, stats)
    ranked = rank_tensors(plan, ranges, act_type, symmetric)
    touching = nodes_touching(plan)
    measured: list[float] = []

    def float_set(tensors: Sequence[ir.Value]) -> dict[ir.Node, str]:
        chosen: dict[ir.Node, str] = {}
        for value in tensors:
            for node in touching.get(value, ()):
                chosen.setdefault(node, SENSITIVE)
        return chosen

    clones: list[ir.Model] = []

    def trial(tensors: Sequence[ir.Value]) -> float:
        clone = quantized_clone(model, quantize_clone, float_set(tensors))
        try:
            sqnr = output_sqnr_db(reference_outputs, ctx.runner.run(clone, feeds), names)
        except Exception as e:  # noqa: BLE001 - a trial the runner rejects counts as the worst result
            logger.warning("fallback: trial with %d tensor(s) float failed to run: %s", len(tensors),
                           str(e).splitlines()[0][:200])
            sqnr = -math.inf
        measured.append(sqnr)
        clones[:] = [clone]
        logger.debug("fallback: %d tensor(s) float -> output SQNR %.1f dB", len(tensors), sqnr)
        return sqnr

    start = best = trial([])
    all_quantized = clones[0]
    slowdown = 1.0
    too_slow: list[str] = []
    if start == -math.inf:
        stats["skipped"] = "the runner failed on the quantized clone"
        return FallbackResult({}, stats)
    chosen_tensors: list[ir.Value] = []
    noise_of = {v: noise for noise, v in ranked}
    macs = {node: node_cost(node).macs for node in plan.nodes}
    budget = max_float_macs * sum(macs.values())
    # Greedy forward selection in order of local noise: a tensor stays float only where the
    # measured output SQNR rises by at least `min_gain_db`; stop at the target or the budgets.
    for _, value in ranked:
        if best >= target_db or len(chosen_tensors) >= max_float or len(measured) > max_trials:
            break
        if sum(macs.get(n, 0) for n in float_set([*chosen_tensors, value])) > budget:
            continue  # would give too much integer compute back to float: too slow
        sqnr = trial([*chosen_tensors, value])
        if sqnr >= best + min_gain_db:
            ratio = timer(all_quantized, clones[0]) if timer is not None else 1.0
            if ratio > 1.0 + max_slowdown:  # one timing is good to a few %: a second one before giving up fidelity
                ratio = min(ratio, timer(all_quantized, clones[0]))
            if ratio > 1.0 + max_slowdown:
                too_slow.append(value.name)
                logger.debug("fallback: %s left quantized: %.2fx slower with it float", value.name, ratio)
                continue
            chosen_tensors.append(value)
            best, slowdown = sqnr, ratio
    chosen = float_set(chosen_tensors)
    stats.update(
        sqnr_db_all_quantized=round(start, 2),
        sqnr_db=round(best, 2),
        met=best >= target_db,
        float_tensors={v.name: round(noise_of[v], 1) for v in chosen_tensors},
        float_nodes=len(chosen),
        float_macs_fraction=round(sum(macs.get(n, 0) for n in chosen) / max(sum(macs.values()), 1), 4),
        trials=len(measured),
    )
    if timer is not None:
        stats.update(slowdown=round(slowdown, 3), max_slowdown=max_slowdown, too_slow=too_slow[:16])
    logger.info("fallback: %d tensor(s) / %d node(s) kept float, output SQNR %.1f -> %.1f dB (target %.1f, %d trials)",
                len(chosen_tensors), len(chosen), start, best, target_db, len(measured))
    return FallbackResult(chosen, stats)

"""Least-squares reconstruction of the layers that lost input channels (teacher-guided, layer-wise).

After pruning, a consumer layer (Conv with group=1, Gemm, MatMul with a constant weight, or a
ConvTranspose with group=1 whose kernel equals its stride, the usual 2x up-sampling of segmentation
heads) that lost input channels computes something else than before. `reconstruct_consumers` refits its weight and
bias by ridge least squares so that, on the calibration data, its output matches the ORIGINAL
model's output of the same layer (He et al. 2017; the LS refit of ../shared/REFERENCES.md, the
biggest post-training lever measured there). Sequentially (the default), layers are refitted one
at a time in topological order, each against the inputs the already-refitted pruned model feeds
it (as GPTQ does), so errors of earlier layers are compensated downstream; one-shot, every layer
is fitted to the original model's inputs with the removed channels dropped, all from shared passes.
The ridge is given, or chosen per layer (`ridge=None`) among RIDGE_CANDIDATES by the error on
every HOLD_OUT-th feed of a fit to the others; a layer no candidate helps there is left alone.

Memory is bounded by each layer's Gram matrix ([X 1]ᵀ[X 1], [X 1]ᵀY), accumulated over streamed
feeds; rows per feed (tokens, spatial positions) are randomly subsampled above a cap. New weights
are new tensors of the same dtype. A refit is kept only if it lowers the layer's error on the
calibration rows. Where the layer has no bias (Conv without B, MatMul not followed by a constant
Add), only the weight is refitted: no bias input is added.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import onnx_ir as ir

from onnxpress.passes.pruning.calibration import GramAccumulator, iter_values
from onnxpress.passes.pruning.layers import RefitLayer, bias_add, conv_rows, is_constant, only_user, unsupported_transpose
from onnxpress.passes.pruning.plan import PruningPlan

__all__ = ["reconstruct_consumers", "refit_layer", "conv_rows", "MAX_ROWS_PER_FEED"]

logger = logging.getLogger(__name__)

#: Rows (tokens, output positions) taken from one feed at most; more are subsampled at random.
MAX_ROWS_PER_FEED = 2048
#: With a fixed ridge, a layer is refitted only from at least as many rows as a column has unknowns.
MIN_ROWS_PER_INPUT = 1
#: The ridge when none is given and there are too few feeds to choose one.
DEFAULT_RIDGE = 0.03


def _consumer(node: ir.Node, plan: PruningPlan, graph: ir.Graph) -> RefitLayer | str | None:
    """The layer to refit, a reason to skip it, or None when it lost no input channels."""
    if node.op_type not in ("Conv", "ConvTranspose", "Gemm", "MatMul") or len(node.inputs) < 2:
        return None
    weight = node.inputs[1]
    if weight is None or weight.name not in plan.tensors:
        return None
    if node.op_type == "Conv":
        in_axis, out_axis = 1, 0
    elif node.op_type == "ConvTranspose":
        in_axis, out_axis = 0, 1
    elif node.op_type == "Gemm":
        attr = node.attributes.get("transB")
        in_axis, out_axis = (1, 0) if attr is not None and attr.value else (0, 1)
    else:
        in_axis, out_axis = 0, 1
    removed = plan.tensors[weight.name]
    if not removed.get(in_axis):
        return None
    if node.op_type in ("Conv", "ConvTranspose"):
        group = node.attributes.get("group")
        if group is not None and group.value != 1:
            return f"group={group.value}"
    if node.op_type == "ConvTranspose" and weight.const_value is not None:
        reason = unsupported_transpose(node, tuple(weight.const_value.shape[2:]))
        if reason:
            return reason
    if not is_constant(weight, graph) or not only_user(weight, node):
        return "weight is not a constant read by this node only"
    if node.inputs[0] is None or node.inputs[0].const_value is not None or not node.inputs[0].name:
        return "input is not a named activation"
    if not node.outputs[0].name:
        return "output has no name"
    shape = tuple(weight.const_value.shape)
    if node.op_type not in ("Conv", "ConvTranspose") and len(shape) != 2:
        return "weight is not a matrix"
    n_out = shape[out_axis]
    kept_out = None
    if removed.get(out_axis):  # the layer lost outputs too: the teacher's other columns are gone
        kept_out = np.setdiff1d(np.arange(n_out + len(removed[out_axis])), removed[out_axis])
    bias = node.inputs[2] if len(node.inputs) > 2 else None
    if node.op_type == "MatMul":
        return RefitLayer(node, weight, bias_add(node, graph, n_out), kept_out)
    if bias is not None and (not is_constant(bias, graph) or not only_user(bias, node)):
        return "bias is not a constant read by this node only"
    if node.op_type == "Gemm":
        alpha = float(node.attributes["alpha"].value) if "alpha" in node.attributes else 1.0
        beta = float(node.attributes["beta"].value) if "beta" in node.attributes else 1.0
        if bias is not None and beta != 0.0 and bias.const_value.size != n_out:
            return "C does not hold one value per output feature"
        if alpha == 0.0:
            return "alpha is 0"
        return RefitLayer(node, weight, bias if beta != 0.0 else None, kept_out, alpha, beta)
    return RefitLayer(node, weight, bias, kept_out)


# ----------------------------------------------------------------------------------------------
# The refit
# ----------------------------------------------------------------------------------------------
#: Float64 numbers the Gram statistics of one batch of one-shot refits may hold (~512 MiB).
GRAM_BUDGET = 64 << 20
#: Numbers one feed's input rows of one layer may hold (rows are capped at this / the layer width).
ROW_BUDGET = 8 << 20


def reconstruct_consumers(original: ir.Model, model: ir.Model, plan: PruningPlan, ctx: Any, *,
                          ridge: float | None = DEFAULT_RIDGE, sequential: bool = True, limit: int | None = 64,
                          max_rows_per_feed: int | None = None, seed: int = 0) -> dict[str, Any]:
    """Refit every layer of `model` that lost input channels under `plan`.

    `original` is the model before pruning (weights shared is fine: nothing is written into it).
    Each layer's teacher is the original model's output of that layer (same value name). Its
    input rows are, with `sequential=False` (one-shot), the original model's input of the layer
    with the removed channels dropped: all layers are fitted from shared passes over the data
    (batched under a memory budget). With `sequential=True` they come from the pruned model as
    refitted so far, one layer at a time in topological order (GPTQ-style: later layers also
    absorb earlier layers' errors; two model runs per layer). `ridge` is relative to the mean
    diagonal of the input Gram matrix and pulls the weights towards the pruned ones.
    Returns stats: `layers` (refitted), and per layer the relative output error on the
    calibration rows before and after the refit.
    """
    feeds = ctx.feeds(limit)
    stats: dict[str, Any] = {"layers": 0, "per_layer": {}, "skipped": {}}
    if ctx.runner is None or not feeds:
        return stats
    known = {v.name for node in original.graph for v in node.outputs if v.name}
    known |= {v.name for v in original.graph.inputs}
    rng = np.random.default_rng(seed)
    layers = []
    for node in list(model.graph):
        layer = _consumer(node, plan, model.graph)
        if layer is None:
            continue
        label = node.name or node.outputs[0].name
        missing = [n for n in (node.outputs[0].name, node.inputs[0].name) if n not in known]
        if isinstance(layer, str) or missing:
            reason = layer if isinstance(layer, str) else f"'{missing[0]}' is not in the original model"
            logger.debug("reconstruct: %s '%s' skipped: %s", node.op_type, label, reason)
            stats["skipped"][label] = reason
            continue
        layers.append(layer)
    if sequential:
        for layer in layers:
            stats["per_layer"][layer.name] = refit_layer(layer, original, model, ctx.runner, feeds, ridge,
                                                    _row_cap(layer, max_rows_per_feed), rng)
    else:
        for batch in _batches(layers):
            accs = [_SplitGram(*layer.effective()[0].shape, feeds=len(feeds)) for layer in batch]
            names = [n for layer in batch for n in (layer.node.inputs[0].name, layer.node.outputs[0].name)]
            keeps = [_kept_inputs(layer, plan) for layer in batch]
            for (teacher,) in iter_values(ctx.runner, [(original, names)], feeds):
                for layer, acc, keep in zip(batch, accs, keeps):
                    x = teacher[layer.node.inputs[0].name]
                    x = np.take(x, keep, axis=layer.input_axis(x.ndim))
                    acc.update(*layer.rows(x, teacher[layer.node.outputs[0].name], rng,
                                           _row_cap(layer, max_rows_per_feed)))
            for layer, acc in zip(batch, accs):
                stats["per_layer"][layer.name] = _solve(layer, acc, ridge)
    stats["layers"] = sum(int(r["refitted"]) for r in stats["per_layer"].values())
    if stats["per_layer"]:
        logger.info("reconstruct: refitted %d of %d layers", stats["layers"], len(stats["per_layer"]))
    return stats


def refit_layer(layer: RefitLayer, original: ir.Model, model: ir.Model, runner: Any, feeds: list,
                ridge: float | None, cap: int, rng: np.random.Generator) -> dict[str, Any]:
    """Refit one layer against the original's output, from the inputs `model` feeds it now."""
    acc = _SplitGram(*layer.effective()[0].shape, feeds=len(feeds))
    x_name, y_name = layer.node.inputs[0].name, layer.node.outputs[0].name
    for teacher, student in iter_values(runner, [(original, [y_name]), (model, [x_name])], feeds):
        acc.update(*layer.rows(student[x_name], teacher[y_name], rng, cap))
    return _solve(layer, acc, ridge)


#: Ridge values `ridge=None` (auto) chooses from, on the held-out calibration feeds.
RIDGE_CANDIDATES = (1e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0)
#: Every HOLD_OUT-th feed is held out to choose the ridge (auto), when there are that many feeds.
HOLD_OUT = 4


class _SplitGram:
    """Gram statistics of one layer, with every HOLD_OUT-th feed kept apart for choosing the ridge."""

    def __init__(self, n_in: int, n_out: int, feeds: int) -> None:
        self.train, self.held = GramAccumulator(n_in, n_out), GramAccumulator(n_in, n_out)
        self.split = feeds >= HOLD_OUT
        self.seen = 0

    def update(self, x: np.ndarray, y: np.ndarray) -> None:
        held = self.split and self.seen % HOLD_OUT == HOLD_OUT - 1
        (self.held if held else self.train).update(x, y)
        self.seen += 1

    def all(self) -> GramAccumulator:
        return self.train.merged(self.held)


def _row_cap(layer: RefitLayer, cap: int | None) -> int:
    """Rows taken from one feed: `cap`, or what fits the row budget for this layer's width."""
    if cap is not None:
        return cap
    width = layer.effective()[0].shape[0]
    return int(min(65536, max(MAX_ROWS_PER_FEED, ROW_BUDGET // max(width, 1))))


def _kept_inputs(layer: RefitLayer, plan: PruningPlan) -> np.ndarray:
    """Indices of the original input channels the pruned layer still reads, ascending."""
    removed = np.asarray(plan.tensors[layer.weight.name][layer.weight_in_axis], dtype=np.int64)
    width = layer.effective()[0].shape[0] // layer.taps
    return np.setdiff1d(np.arange(width + len(removed)), removed)


def _batches(layers: list[RefitLayer]) -> list[list[RefitLayer]]:
    """Consecutive layers whose Gram statistics fit `GRAM_BUDGET` together (at least one each)."""
    batches: list[list[RefitLayer]] = []
    used = GRAM_BUDGET
    for layer in layers:
        n_in, n_out = layer.effective()[0].shape
        size = (n_in + 1) * (n_in + 1 + n_out)
        if used + size > GRAM_BUDGET:
            batches.append([])
            used = 0
        batches[-1].append(layer)
        used += size
    return batches


def _solve(layer: RefitLayer, split: _SplitGram, ridge: float | None) -> dict[str, Any]:
    """Fit `layer` from its statistics; write the fit back only if it lowers the error.

    With `ridge=None` the ridge is chosen among RIDGE_CANDIDATES by the error on the held-out
    feeds of a fit to the others, and the layer is left alone when no candidate beats the pruned
    weights there; the final fit uses every feed.
    """
    w_eff, b_eff = layer.effective()
    acc = split.all()
    before = acc.relative_error(w_eff, b_eff)
    chosen = ridge
    if ridge is None and split.split and split.held.rows and split.train.rows:
        held_before = split.held.relative_error(w_eff, b_eff)
        scores = {r: split.held.relative_error(*split.train.solve(r, bias=b_eff is not None, prior=w_eff,
                                                                     tie=layer.phases))
                  for r in RIDGE_CANDIDATES}
        chosen = min(scores, key=scores.get)
        if not scores[chosen] < held_before:
            logger.debug("reconstruct: %s '%s' not refitted: no ridge helps on the held-out feeds", layer.op,
                         layer.name)
            return {"error_before": round(before, 6), "error_after": round(before, 6), "rows": acc.rows,
                    "refitted": False, "reason": "no ridge lowers the held-out error"}
    elif ridge is None:  # too few feeds to hold any out
        chosen = DEFAULT_RIDGE
    if ridge is not None and acc.rows < MIN_ROWS_PER_INPUT * (acc.n_in + 1):
        # fewer rows than unknowns (a conv after global pooling sees one row per feed): the fit,
        # its bias undamped, would reproduce these few rows and nothing else
        logger.warning("reconstruct: %s '%s' not refitted: %d inputs but only %d calibration rows (give more "
                       "data, or ridge=auto to decide on held-out feeds)", layer.op, layer.name, acc.n_in, acc.rows)
        return {"error_before": round(before, 6), "error_after": round(before, 6), "rows": acc.rows,
                "refitted": False, "reason": "too few calibration rows"}
    new_w, new_b = acc.solve(chosen, bias=b_eff is not None, prior=w_eff, tie=layer.phases)
    after = acc.relative_error(new_w, new_b)
    refitted = bool(np.isfinite(after) and after < before)
    if refitted:
        layer.write(new_w, new_b)
    logger.debug("reconstruct: %s '%s': error %.4g -> %.4g over %d rows (ridge %g)%s", layer.op, layer.name, before,
                 after, acc.rows, chosen, "" if refitted else " (kept the pruned weights)")
    return {"error_before": round(before, 6), "error_after": round(after if refitted else before, 6),
            "rows": acc.rows, "refitted": refitted, "ridge": chosen}

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

import dataclasses
import logging
from typing import Any

import numpy as np
import onnx_ir as ir

from onnxpress.passes.pruning.calibration import GramAccumulator, iter_values
from onnxpress.passes.pruning.plan import PruningPlan

__all__ = ["reconstruct_consumers", "conv_rows", "MAX_ROWS_PER_FEED"]

logger = logging.getLogger(__name__)

#: Rows (tokens, output positions) taken from one feed at most; more are subsampled at random.
MAX_ROWS_PER_FEED = 2048
#: With a fixed ridge, a layer is refitted only from at least as many rows as a column has unknowns.
MIN_ROWS_PER_INPUT = 1
#: The ridge when none is given and there are too few feeds to choose one.
DEFAULT_RIDGE = 0.03


# ----------------------------------------------------------------------------------------------
# Conv as a matrix product
# ----------------------------------------------------------------------------------------------
def _conv_geometry(node: ir.Node, in_spatial: tuple[int, ...], out_spatial: tuple[int, ...],
                   kernel: tuple[int, ...]) -> tuple[list[int], list[int], list[int]]:
    """(strides, dilations, pads [begin..., end...]) with auto_pad resolved."""
    nd = len(kernel)

    def ints(name: str, default: list[int]) -> list[int]:
        attr = node.attributes.get(name)
        return list(attr.value) if attr is not None else default

    strides = ints("strides", [1] * nd)
    dilations = ints("dilations", [1] * nd)
    pads = ints("pads", [0] * (2 * nd))
    auto_pad = node.attributes.get("auto_pad")
    mode = auto_pad.value if auto_pad is not None else "NOTSET"
    if mode == "VALID":
        pads = [0] * (2 * nd)
    elif mode in ("SAME_UPPER", "SAME_LOWER"):
        pads = [0] * (2 * nd)
        for i in range(nd):
            total = max(0, (out_spatial[i] - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1 - in_spatial[i])
            small, large = total // 2, total - total // 2
            pads[i], pads[i + nd] = (small, large) if mode == "SAME_UPPER" else (large, small)
    return strides, dilations, pads


def conv_rows(x: np.ndarray, node: ir.Node, kernel: tuple[int, ...], out_spatial: tuple[int, ...],
              positions: np.ndarray) -> np.ndarray:
    """im2col of `x` [B, C, *spatial] at the given flat output positions (over [B, *out_spatial]).

    Row r holds the input patch of output position `positions[r]`, ordered (C, *kernel) like a
    Conv weight `W.reshape(O, -1)`: `conv_rows(...) @ W.reshape(O, -1).T + B` is the Conv output
    at those positions (group=1).
    """
    nd = len(kernel)
    strides, dilations, pads = _conv_geometry(node, tuple(x.shape[2:]), out_spatial, kernel)
    padded = np.pad(x, [(0, 0), (0, 0)] + [(pads[i], pads[i + nd]) for i in range(nd)])
    coords = np.unravel_index(positions, (x.shape[0], *out_spatial))
    p, c = len(positions), x.shape[1]
    index = [coords[0].reshape(p, 1, *[1] * nd), np.arange(c).reshape(1, c, *[1] * nd)]
    for i in range(nd):
        taps = coords[1 + i][:, None] * strides[i] + np.arange(kernel[i])[None, :] * dilations[i]
        shape = [p, 1] + [1] * nd
        shape[2 + i] = kernel[i]
        index.append(taps.reshape(shape))
    return padded[tuple(index)].reshape(p, -1)


# ----------------------------------------------------------------------------------------------
# Layers
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass
class _Layer:
    """A consumer layer as `Y = X W_eff + b_eff`, and how to write a refit back.

    A ConvTranspose whose kernel equals its stride (no padding, no dilation) maps every input pixel
    to its own s×s output block: one row per input pixel, one column per (output channel, offset
    in the block) (`phases` columns per channel), and one bias per channel shared by its columns.
    """

    node: ir.Node
    weight: ir.Value
    bias: ir.Value | None  # Conv B, Gemm C, or the constant of the Add after a MatMul
    kept_out: np.ndarray | None = None  # original output channels still there (None: all)
    alpha: float = 1.0  # Gemm: W_eff = alpha·B', b_eff = beta·C
    beta: float = 1.0

    @property
    def op(self) -> str:
        return self.node.op_type

    @property
    def name(self) -> str:
        return self.node.name or self.node.outputs[0].name

    @property
    def weight_in_axis(self) -> int:
        """The weight axis that holds the input channels."""
        if self.op == "Conv":
            return 1
        return int(bool(self._attr("transB", 0))) if self.op == "Gemm" else 0  # ConvTranspose: [C_in, C_out, *k]

    @property
    def taps(self) -> int:
        """Rows of the effective weight per input channel (the kernel size of a Conv)."""
        shape = self.weight.const_value.shape
        return int(np.prod(shape[2:], dtype=np.int64)) if self.op == "Conv" else 1

    @property
    def phases(self) -> int:
        """Columns of the effective weight per output channel (the block size of a ConvTranspose)."""
        shape = self.weight.const_value.shape
        return int(np.prod(shape[2:], dtype=np.int64)) if self.op == "ConvTranspose" else 1

    def input_axis(self, ndim: int) -> int:
        """The axis of the layer's input tensor (of rank `ndim`) that holds the channels."""
        if self.op in ("Conv", "ConvTranspose"):
            return 1
        if self.op == "Gemm":
            return 0 if self._attr("transA", 0) else 1
        return ndim - 1

    def _attr(self, name: str, default: Any) -> Any:
        a = self.node.attributes.get(name)
        return default if a is None else a.value

    def effective(self) -> tuple[np.ndarray, np.ndarray | None]:
        w = np.asarray(self.weight.const_value.numpy(), dtype=np.float64)
        if self.op == "Conv":
            w_eff = w.reshape(w.shape[0], -1).T
        elif self.op == "ConvTranspose":
            w_eff = w.reshape(w.shape[0], -1)
        elif self.op == "Gemm":
            w_eff = self.alpha * (w.T if self._attr("transB", 0) else w)
        else:
            w_eff = w
        if self.bias is None:
            return w_eff, None
        if self.op == "MatMul":  # the refit adds a correction to the Add's constant
            return w_eff, np.zeros(w_eff.shape[1])
        b = np.asarray(self.bias.const_value.numpy(), dtype=np.float64).reshape(-1)
        return w_eff, (self.beta * b if self.op == "Gemm" else np.repeat(b, self.phases))

    def rows(self, x: np.ndarray, y: np.ndarray, rng: np.random.Generator, cap: int) -> tuple[np.ndarray, np.ndarray]:
        """Matching (input rows, target rows) of one feed, at most `cap` of them."""
        if self.op == "Conv":
            kernel = tuple(self.weight.const_value.shape[2:])
            out_spatial = tuple(y.shape[2:])
            total = y.shape[0] * int(np.prod(out_spatial, dtype=np.int64))
            positions = _subsample(total, cap, rng)
            targets = np.moveaxis(y, 1, -1).reshape(-1, y.shape[1])[positions]
            return conv_rows(x, self.node, kernel, out_spatial, positions), self._kept(targets)
        if self.op == "ConvTranspose":  # y[b, o, s·i + a] = Σ_c x[b, c, i] W[c, o, a] + B[o]
            block = tuple(self.weight.const_value.shape[2:])
            nd, spatial = len(block), x.shape[2:]
            split = [y.shape[0], y.shape[1]] + [n for i in range(nd) for n in (spatial[i], block[i])]
            order = [0] + [2 + 2 * i for i in range(nd)] + [1] + [3 + 2 * i for i in range(nd)]
            targets = y.reshape(split).transpose(order).reshape(-1, y.shape[1] * self.phases)
            x = np.moveaxis(x, 1, -1).reshape(-1, x.shape[1])
            positions = _subsample(x.shape[0], cap, rng)
            return x[positions], self._kept(targets[positions])
        if self.op == "Gemm" and self._attr("transA", 0):
            x = x.T
        x = x.reshape(-1, x.shape[-1])
        y = y.reshape(-1, y.shape[-1])
        positions = _subsample(x.shape[0], cap, rng)
        return x[positions], self._kept(y[positions])

    def _kept(self, targets: np.ndarray) -> np.ndarray:
        """The teacher's columns of the output channels this layer still has."""
        if self.kept_out is None:
            return targets
        columns = (self.kept_out[:, None] * self.phases + np.arange(self.phases)[None, :]).reshape(-1)
        return targets[:, columns]

    def write(self, w_eff: np.ndarray, b_eff: np.ndarray | None) -> None:
        old = self.weight.const_value
        if self.op == "Conv":
            new = w_eff.T.reshape(old.shape)
        elif self.op == "ConvTranspose":
            new = w_eff.reshape(old.shape)
        elif self.op == "Gemm":
            new = w_eff / self.alpha
            new = new.T if self._attr("transB", 0) else new
        else:
            new = w_eff
        _assign(self.weight, new)
        if self.bias is None or b_eff is None:
            return
        shape = tuple(self.bias.const_value.shape)
        if self.op == "MatMul":
            base = np.asarray(self.bias.const_value.numpy(), dtype=np.float64)
            _assign(self.bias, base + b_eff.reshape(shape))
        elif self.op == "Gemm":
            _assign(self.bias, (b_eff / self.beta).reshape(shape))
        elif self.op == "ConvTranspose":  # the fit shares one bias per channel (equal columns)
            _assign(self.bias, b_eff.reshape(-1, self.phases).mean(axis=1).reshape(shape))
        else:
            _assign(self.bias, b_eff.reshape(shape))


def _subsample(total: int, cap: int, rng: np.random.Generator) -> np.ndarray:
    if total <= cap:
        return np.arange(total)
    return np.sort(rng.choice(total, size=cap, replace=False))


def _assign(value: ir.Value, array: np.ndarray) -> None:
    """Give `value` a new tensor (never write into the old buffer), same dtype and shape."""
    dtype = value.const_value.numpy().dtype
    value.const_value = ir.tensor(np.ascontiguousarray(array.astype(dtype)), name=value.name)


def _only_user(value: ir.Value | None, node: ir.Node) -> bool:
    return value is not None and not value.is_graph_output() and all(u.node is node for u in value.uses())


def _constant(value: ir.Value | None, graph: ir.Graph) -> bool:
    return (value is not None and value.const_value is not None and value.name in graph.initializers
            and value not in graph.inputs)


def _unsupported_transpose(node: ir.Node, kernel: tuple[int, ...]) -> str | None:
    """Why a ConvTranspose is not one output block per input pixel (None when it is)."""
    def ints(name: str, default: int) -> list[int]:
        attr = node.attributes.get(name)
        return list(attr.value) if attr is not None else [default] * len(kernel)

    auto_pad = node.attributes.get("auto_pad")
    if auto_pad is not None and auto_pad.value not in ("NOTSET", "VALID"):
        return f"ConvTranspose auto_pad={auto_pad.value}"
    if "output_shape" in node.attributes:
        return "ConvTranspose with output_shape"
    if ints("strides", 1) != list(kernel) or any(ints("pads", 0)) or any(d != 1 for d in ints("dilations", 1)) \
            or any(ints("output_padding", 0)):
        return "ConvTranspose kernel differs from its stride (overlapping or padded blocks)"
    return None


def _bias_add(node: ir.Node, graph: ir.Graph, n_out: int) -> ir.Value | None:
    """The per-feature constant of an Add that alone consumes a MatMul's output, if any."""
    out = node.outputs[0]
    uses = list(out.uses())
    if out.is_graph_output() or len(uses) != 1 or uses[0].node.op_type != "Add":
        return None
    add = uses[0].node
    other = add.inputs[1 - uses[0].idx] if len(add.inputs) == 2 else None
    if not _constant(other, graph) or not _only_user(other, add):
        return None
    shape = tuple(other.const_value.shape)
    if int(np.prod(shape, dtype=np.int64)) != n_out or (shape and shape[-1] != n_out):
        return None
    return other


def _consumer(node: ir.Node, plan: PruningPlan, graph: ir.Graph) -> _Layer | str | None:
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
        reason = _unsupported_transpose(node, tuple(weight.const_value.shape[2:]))
        if reason:
            return reason
    if not _constant(weight, graph) or not _only_user(weight, node):
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
        return _Layer(node, weight, _bias_add(node, graph, n_out), kept_out)
    if bias is not None and (not _constant(bias, graph) or not _only_user(bias, node)):
        return "bias is not a constant read by this node only"
    if node.op_type == "Gemm":
        alpha = float(node.attributes["alpha"].value) if "alpha" in node.attributes else 1.0
        beta = float(node.attributes["beta"].value) if "beta" in node.attributes else 1.0
        if bias is not None and beta != 0.0 and bias.const_value.size != n_out:
            return "C does not hold one value per output feature"
        if alpha == 0.0:
            return "alpha is 0"
        return _Layer(node, weight, bias if beta != 0.0 else None, kept_out, alpha, beta)
    return _Layer(node, weight, bias, kept_out)


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
            stats["per_layer"][layer.name] = _refit(layer, original, model, ctx.runner, feeds, ridge,
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


def _refit(layer: _Layer, original: ir.Model, model: ir.Model, runner: Any, feeds: list,
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


def _row_cap(layer: _Layer, cap: int | None) -> int:
    """Rows taken from one feed: `cap`, or what fits the row budget for this layer's width."""
    if cap is not None:
        return cap
    width = layer.effective()[0].shape[0]
    return int(min(65536, max(MAX_ROWS_PER_FEED, ROW_BUDGET // max(width, 1))))


def _kept_inputs(layer: _Layer, plan: PruningPlan) -> np.ndarray:
    """Indices of the original input channels the pruned layer still reads, ascending."""
    removed = np.asarray(plan.tensors[layer.weight.name][layer.weight_in_axis], dtype=np.int64)
    width = layer.effective()[0].shape[0] // layer.taps
    return np.setdiff1d(np.arange(width + len(removed)), removed)


def _batches(layers: list[_Layer]) -> list[list[_Layer]]:
    """Consecutive layers whose Gram statistics fit `GRAM_BUDGET` together (at least one each)."""
    batches: list[list[_Layer]] = []
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


def _solve(layer: _Layer, split: _SplitGram, ridge: float | None) -> dict[str, Any]:
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

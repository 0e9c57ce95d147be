"""LowRankSvdPass: a linear layer's weight replaced by two thin factors, y = (x·A)·B.

`lowrank-svd{rank-ratio= energy= rank= data-aware=false min-gain=0.1 align=8 closed-loop=false
allocation=uniform|sensitivity|measured refit=false ridge=0.05 damping=0.03 include= exclude=}` turns
`MatMul(x, W)` into `MatMul(MatMul(x, A), B)` and `Gemm(x, B, C)` into `Gemm(Gemm(x, A), B', C)`
(`MatMul` where the Gemm has no C and no transA), with W ≈ A·B of rank r. x may have any number
of leading batch / sequence dims; a bias Add after a MatMul stays where it is, Gemm keeps its C and
beta (alpha is folded into the factors). The pay-off is rank < K·N/(K+N); the cost gate refuses
ranks that do not remove `min-gain` of the layer's parameters and MACs.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from typing import Any

import numpy as np
import onnx_ir as ir

from onnxpress.passes.base import PassResult
from onnxpress.passes.cleanup import _util as u
from onnxpress.passes.lowrank import math as lrm
from onnxpress.passes.lowrank._base import DEFAULT_KEEP, LayerwisePass, check_common, check_rank_options
from onnxpress.passes.lowrank._calibration import input_grams, ready
from onnxpress.passes.lowrank._closed_loop import (
    add_to_bias,
    bias_value,
    closed_loop_stats,
    fit_closed_loop,
    follower_layer,
    followers,
    in_scope,
)
from onnxpress.passes.lowrank._emit import Replacement, node_names
from onnxpress.passes.lowrank._layers import LinearLayer, dims_of, linears, match_linear
from onnxpress.passes.lowrank._records import LayerRecord, check_fraction, decompose_each, gate, relative_error, result
from onnxpress.passes.lowrank._sensitivity import allocate_from_curves, measure_curves
from onnxpress.passes.manager import PassContext
from onnxpress.passes.pruning.prune_channels import parse_ignore
from onnxpress.passes.pruning.reconstruct import refit_layer
from onnxpress.passes.registry import register_pass

__all__ = ["LowRankSvdPass"]

logger = logging.getLogger(__name__)


@register_pass
class LowRankSvdPass(LayerwisePass):
    """Factor constant MatMul / Gemm weights by truncated (optionally data-aware) SVD.

    Rank per layer: `rank` (taken as given), or the smallest rank keeping `energy` of the squared
    singular values, or the rank keeping `rank-ratio` of the layer's parameters (0.5 when no option
    is given); chosen ranks are rounded to multiples of `align` where that stays below full rank.
    `energy` reads the weight's own spectrum, also with `data-aware=true`.
    With `data-aware=true` and calibration data in the PassContext, each layer's input Gram XᵀX is
    collected on the partly decomposed model (layers go in waves, see `_calibration`) and the
    factors minimise the output error ‖x(W − AB)‖ (whitened SVD, SVD-LLM); without data it warns
    and falls back to plain SVD. `damping` (a fraction of mean(diag XᵀX), added to the Gram)
    moves the data-aware fit from pure whitening (0: the best fit to the calibration inputs)
    towards the plain SVD (large: the best fit to the weight); the default 0.03 keeps the
    directions a small calibration set never excites (`math.whitened_svd`).

    Options for quality (all need calibration data; without it they warn and fall back):
    `closed-loop=true` fits each layer, in topological waves, so that the compressed model's
    input X_c times A·B matches the ORIGINAL layer output X·W (ridge target W*, then whitened
    SVD of W* under X_cᵀX_c, see `_closed_loop`); it implies data-aware.
    `allocation=sensitivity` replaces the per-layer ratio by one parameter budget (`rank-ratio`
    of the in-scope layers' parameters, 0.5 by default) shared greedily by smallest increase of
    relative output error (whitened tail energy, measured on the original model) per parameter
    saved; layers may stay dense. Without data the weight spectra are used.
    `allocation=measured` shares the same budget by measured end-to-end sensitivity instead: each
    layer truncated alone at a few ranks in a clone, the model's outputs compared on 16
    calibration feeds (`_sensitivity`); it costs one model run per (layer, rank) pair and sees
    what the spectra cannot (a layer whose errors the rest of the model amplifies). It lands on
    the budget (less than one `align` step of a layer under it); `sensitivity` may overshoot by
    its last greedy step.
    `refit=true` refits, by ridge least squares against the original outputs, the second factor
    and a bias correction of each decomposed layer that has a bias (closed loop), and every
    non-decomposed MatMul / Gemm that follows a decomposed one through element-wise ops only.
    `ridge` is the damping of those solves (times mean(diag XᵀX)), pulling towards the original
    weight: on MiniLM with ~4.6k domain-shifted calibration tokens a 1536-wide closed-loop target
    overfits at 0.001 (mean embedding cosine 0.85) and not at 0.05 (0.87). `include` / `exclude` (node
    names, `re:REGEX`, `op:TYPE`, comma-separated) restrict the layers considered.

    Skips, with a debug log and a count in `stats["skip_reasons"]`: dynamic or shared weights,
    non-float weights, custom domains, nodes inside subgraphs or functions, and layers where the
    rank is not below full or the gate refuses. Stats: per layer ranks, params and MACs before ->
    after, relative weight error and (data-aware) output error.
    """

    name = "lowrank-svd"

    @dataclasses.dataclass(frozen=True)
    class Options:
        rank_ratio: float | None = None
        energy: float | None = None
        rank: int | None = None
        data_aware: bool = False
        min_gain: float = 0.1
        align: int = 8
        max_samples: int = 64
        closed_loop: bool = False
        allocation: str = "uniform"
        refit: bool = False
        ridge: float = 0.05
        damping: float = lrm.DEFAULT_DAMPING
        include: tuple[str, ...] = ()
        exclude: tuple[str, ...] = ()

        def __post_init__(self) -> None:
            check_rank_options(rank_ratio=self.rank_ratio, energy=self.energy, rank=self.rank)
            if self.allocation not in ("uniform", "sensitivity", "measured"):
                raise ValueError("allocation must be uniform, sensitivity or measured")
            if self.allocation != "uniform" and (self.energy is not None or self.rank is not None):
                raise ValueError(f"allocation={self.allocation} shares a rank-ratio budget; energy and rank do not apply")
            if not self.ridge > 0.0:
                raise ValueError("ridge must be positive")
            if not self.damping >= 0.0:
                raise ValueError("damping must be zero or positive")
            parse_ignore(tuple(self.include))
            parse_ignore(tuple(self.exclude))
            check_fraction("rank-ratio", self.rank_ratio)
            check_fraction("energy", self.energy, closed_high=True)
            if self.rank is not None and self.rank < 1:
                raise ValueError("rank must be at least 1")
            check_common(self.min_gain, self.align)
            if self.max_samples < 1:
                raise ValueError("max-samples must be at least 1")

    def candidates(self, model: ir.Model, skipped: Counter[str]) -> list[LinearLayer]:
        found = linears(model, ("MatMul", "Gemm"), self.name, skipped)
        return in_scope(found, self.options.include, self.options.exclude, skipped)

    def run(self, model: ir.Model, am: Any) -> PassResult:
        opts = self.options
        graph = model.graph
        skipped: Counter[str] = Counter()
        layers = self.candidates(model, skipped)
        ctx = PassContext.current()
        wants_data = opts.data_aware or opts.closed_loop or opts.allocation != "uniform" or opts.refit
        feeds = ctx.feeds(opts.max_samples) if wants_data else []
        if wants_data and (ctx.runner is None or not feeds):
            ctx.diagnose("lowrank-svd: data-aware / closed-loop / sensitivity / refit need a runner and data; "
                         "the context has none: plain SVD (weight spectra) used")
            feeds = []
        runner = ctx.runner

        self._ranks: dict[int, int | None] = {}
        self._last: dict[int, ir.Node] = {}  # id(original node) -> last node of its replacement
        allocation: dict[str, int | None] = {}
        if opts.allocation != "uniform" and layers:
            grams = input_grams(model, layers, runner, feeds) if feeds else {}
            keep = opts.rank_ratio if opts.rank_ratio is not None else DEFAULT_KEEP
            shapes = [layer.shape for layer in layers]
            if opts.allocation == "measured" and feeds:
                curves = measure_curves(model, layers, grams, runner, feeds, opts.align, opts.min_gain,
                                        opts.damping)
                ranks = allocate_from_curves(shapes, curves, keep, opts.align, opts.min_gain)
            else:
                spectra = [lrm.whitened_singular_values(layer.w_eff, grams.get(id(layer.node)), opts.damping)
                           for layer in layers]
                ranks = lrm.allocate_ranks(shapes, spectra, keep, opts.align, opts.min_gain)
            for layer, rank in zip(layers, ranks):
                self._ranks[id(layer.node)] = rank
                allocation[layer.node.name or ""] = rank

        names, taken = u.NameScope(model), node_names(graph)
        records: list[LayerRecord] = []
        refits: dict[str, Any] = {}
        closed = opts.closed_loop and bool(feeds)
        original = model.clone() if closed or (opts.refit and feeds) else None
        pending: list[LinearLayer] = list(layers)
        follower_ids: set[int] = set()
        rng = np.random.default_rng(0)
        while pending:  # without data, one wave holds every layer
            wave = ready(graph, pending) if feeds else pending
            for layer in wave:  # an earlier replacement may have swapped the value it reads
                layer.x = layer.node.inputs[0]
            decomposed = [layer for layer in wave if id(layer.node) not in follower_ids]
            if closed:
                stats = closed_loop_stats(original, model, decomposed, runner, feeds)
                done = decompose_each(decomposed, lambda layer: self._closed(layer, names, taken, stats), self.name,
                                      skipped)
            else:
                grams = input_grams(model, decomposed, runner, feeds) if feeds and opts.data_aware else {}
                done = decompose_each(
                    decomposed, lambda layer: self.decompose(layer, names, taken, grams.get(id(layer.node))),
                    self.name, skipped)
            records += done
            for layer in wave:
                if id(layer.node) in follower_ids:
                    result_ = refit_layer(follower_layer(layer, graph), original, model, runner, feeds, opts.ridge,
                                     2048, rng)
                    refits[layer.node.name or ""] = result_
            if opts.refit and original is not None:
                pending_ids = {id(layer.node) for layer in pending}
                for layer in decomposed:
                    if id(layer.node) not in self._last:
                        continue
                    for node in followers(self._last[id(layer.node)]):
                        if id(node) in pending_ids or id(node) in follower_ids:
                            continue
                        found = match_linear(node, u.default_opset(model))
                        if isinstance(found, LinearLayer):
                            follower_ids.add(id(node))
                            pending.append(found)
            finished = {id(layer.node) for layer in wave}
            pending = [layer for layer in pending if id(layer.node) not in finished]
        out = result(model, self.name, records, skipped)
        if allocation:
            out.stats["allocation"] = allocation
        if refits:
            out.stats["refits"] = refits
        return out

    def _closed(self, layer: LinearLayer, names: u.NameScope, taken: set[str], stats: dict) -> LayerRecord | str:
        acc = stats.get(id(layer.node))
        if acc is None:
            return self.decompose(layer, names, taken, None)
        return self.decompose(layer, names, taken, acc=acc)

    # -- one layer -----------------------------------------------------------------------------
    def _rank(self, w: np.ndarray) -> int:
        opts = self.options
        k, n = w.shape
        if opts.rank is not None:
            return opts.rank
        if opts.energy is not None:
            chosen = lrm.rank_for_energy(lrm.singular_values(w), opts.energy)
        else:
            keep = opts.rank_ratio if opts.rank_ratio is not None else DEFAULT_KEEP
            chosen = lrm.rank_for_param_ratio(k, n, keep)
        return lrm.round_rank(chosen, opts.align, min(k, n))

    def decompose(self, layer: LinearLayer, names: u.NameScope, taken: set[str],
                  gram: np.ndarray | None = None, acc: Any = None) -> LayerRecord | str:
        w = layer.w_eff
        k, n = w.shape
        allocated = getattr(self, "_ranks", {})
        if id(layer.node) in allocated:
            if allocated[id(layer.node)] is None:
                return "kept dense by the rank allocation"
            rank = allocated[id(layer.node)]
        else:
            rank = self._rank(w)
        if rank >= min(k, n):
            return "rank not below full rank"
        rows = layer.tokens or 1
        params_after, macs_after = lrm.svd_cost(k, n, rank, rows)
        params, macs = (k * n, params_after), (rows * k * n, macs_after)
        refused = gate(params, macs, self.options.min_gain)
        if refused is not None:
            return refused
        output_err = None
        bias_target = None
        if acc is not None:
            bias_target = bias_value(layer, layer.node.graph) if self.options.refit else None
            fit = fit_closed_loop(w, acc, rank, self.options.ridge, refit_bias=bias_target is not None,
                                  damping=self.options.damping)
            a, b, output_err = fit.a, fit.b, fit.error
            method = "closed-loop-svd" + ("+bias" if fit.delta is not None else "")
            logger.debug("%s: '%s' rank %d: output error %.4g (open loop %.4g)", self.name, layer.node.name, rank,
                         fit.error, fit.error_open)
        elif gram is not None:
            a, b = lrm.whitened_svd(w, gram, rank, eps=self.options.damping)
            output_err, method = lrm.output_error(w, a, b, gram), "whitened-svd"
        else:
            a, b = lrm.truncated_svd(w, rank)
            method = "svd"
        rep = Replacement(layer.node, layer.weight, self.name, names, taken)
        _emit(layer, a, b, rep)
        if hasattr(self, "_last"):
            self._last[id(layer.node)] = rep.nodes[-1]
        if acc is not None and fit.delta is not None and bias_target is not None:
            scale = layer.beta if layer.node.op_type == "Gemm" else 1.0
            add_to_bias(bias_target, fit.delta, scale)
        return LayerRecord(
            node=layer.node.name or "",
            op=layer.node.op_type,
            method=method,
            ranks=(rank,),
            params=(params[0], rep.params),
            macs=macs,
            weight_error=relative_error(w, a @ b),
            output_error=output_err,
        )


def _emit(layer: LinearLayer, a: np.ndarray, b: np.ndarray, rep: Replacement) -> None:
    x = layer.x
    rank = a.shape[1]
    x_dims = dims_of(x)
    if layer.trans_a:
        mid = [x_dims[1], rank] if x_dims is not None and len(x_dims) == 2 else None
        h = rep.op("Gemm", [x, rep.weight_value("svd_a", a)], "svd_a", mid, transA=1)
    else:
        mid = [*x_dims[:-1], rank] if x_dims else None
        h = rep.op("MatMul", [x, rep.weight_value("svd_a", a)], "svd_a", mid)
    factor_b = rep.weight_value("svd_b", b)
    if layer.bias is not None:  # the last value's shape: the original output's, set by commit
        y = rep.op("Gemm", [h, factor_b, layer.bias], "svd_b", None, beta=layer.beta if layer.beta != 1.0 else None)
    else:
        y = rep.op("MatMul", [h, factor_b], "svd_b", None)
    rep.commit(y)

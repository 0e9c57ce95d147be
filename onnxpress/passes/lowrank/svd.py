"""LowRankSvdPass: a linear layer's weight replaced by two thin factors, y = (x·A)·B.

`lowrank-svd{rank-ratio= energy= rank= data-aware=false min-gain=0.1 align=8}` turns
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
from onnxpress.passes.lowrank._emit import Replacement, node_names
from onnxpress.passes.lowrank._layers import LinearLayer, dims_of, linears
from onnxpress.passes.lowrank._records import LayerRecord, check_fraction, decompose_each, gate, relative_error, result
from onnxpress.passes.manager import PassContext
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
    and falls back to plain SVD.

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

        def __post_init__(self) -> None:
            check_rank_options(rank_ratio=self.rank_ratio, energy=self.energy, rank=self.rank)
            check_fraction("rank-ratio", self.rank_ratio)
            check_fraction("energy", self.energy, closed_high=True)
            if self.rank is not None and self.rank < 1:
                raise ValueError("rank must be at least 1")
            check_common(self.min_gain, self.align)
            if self.max_samples < 1:
                raise ValueError("max-samples must be at least 1")

    def candidates(self, model: ir.Model, skipped: Counter[str]) -> list[LinearLayer]:
        return linears(model, ("MatMul", "Gemm"), self.name, skipped)

    def run(self, model: ir.Model, am: Any) -> PassResult:
        graph = model.graph
        skipped: Counter[str] = Counter()
        layers = self.candidates(model, skipped)
        ctx = PassContext.current()
        feeds = ctx.feeds(self.options.max_samples) if self.options.data_aware else []
        if self.options.data_aware and (ctx.runner is None or not feeds):
            ctx.diagnose("lowrank-svd: data-aware=true but the context has no runner or no data; plain SVD used")
            feeds = []

        names, taken = u.NameScope(model), node_names(graph)
        records: list[LayerRecord] = []
        pending = layers
        while pending:  # without data, one wave holds every layer
            wave = ready(graph, pending) if feeds else pending
            grams = input_grams(model, wave, ctx.runner, feeds) if feeds else {}
            records += decompose_each(
                wave, lambda layer: self.decompose(layer, names, taken, grams.get(id(layer.node))), self.name, skipped)
            done = {id(layer.node) for layer in wave}
            pending = [layer for layer in pending if id(layer.node) not in done]
        return result(model, self.name, records, skipped)

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
                  gram: np.ndarray | None = None) -> LayerRecord | str:
        w = layer.w_eff
        k, n = w.shape
        rank = self._rank(w)
        if rank >= min(k, n):
            return "rank not below full rank"
        rows = layer.tokens or 1
        params_after, macs_after = lrm.svd_cost(k, n, rank, rows)
        params, macs = (k * n, params_after), (rows * k * n, macs_after)
        refused = gate(params, macs, self.options.min_gain)
        if refused is not None:
            return refused
        if gram is not None:
            a, b = lrm.whitened_svd(w, gram, rank)
        else:
            a, b = lrm.truncated_svd(w, rank)
        rep = Replacement(layer.node, layer.weight, self.name, names, taken)
        _emit(layer, a, b, rep)
        return LayerRecord(
            node=layer.node.name or "",
            op=layer.node.op_type,
            method="whitened-svd" if gram is not None else "svd",
            ranks=(rank,),
            params=(params[0], rep.params),
            macs=macs,
            weight_error=relative_error(w, a @ b),
            output_error=lrm.output_error(w, a, b, gram) if gram is not None else None,
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

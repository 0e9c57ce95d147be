"""LowRankCpPass: a k×k Conv as Conv 1×1 → depthwise kh×1 → depthwise 1×kw → Conv 1×1 (CP / PARAFAC).

`lowrank-cp{rank= rank-ratio= min-gain=0.1 align=8 max-iters=100 restarts=1}` writes a group=1
kernel as a sum of R rank-1 terms, W[o,i,h,w] ≈ Σ_r out[o,r]·in[r,i]·vert[r,h]·horiz[r,w]
(Lebedev et al. 2015), and emits: a pointwise conv Cin → R at the input resolution, a depthwise
(group=R) kh×1 conv with the vertical stride / pads / dilation, a depthwise 1×kw conv with the
horizontal ones, and a pointwise conv R → Cout with the original bias. CP is the most aggressive of the conv decompositions and its ALS
fit is lossy on real kernels: read `weight_error` in the stats.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter

import numpy as np
import onnx_ir as ir

from onnxpress.passes.cleanup import _util as u
from onnxpress.passes.lowrank import math as lrm
from onnxpress.passes.lowrank._base import DEFAULT_KEEP, LayerwisePass, check_common, check_rank_options
from onnxpress.passes.lowrank._emit import Replacement
from onnxpress.passes.lowrank._layers import ConvLayer, conv_attributes, conv_dims, conv_sizes, convs
from onnxpress.passes.lowrank._records import LayerRecord, check_fraction, gate, relative_error
from onnxpress.passes.registry import register_pass

__all__ = ["LowRankCpPass"]

logger = logging.getLogger(__name__)

#: Seed of the first start's random columns (restart k uses SEED + k).
SEED = 0


@register_pass
class LowRankCpPass(LayerwisePass):
    """CP decomposition of group=1 2-D Conv kernels larger than 1×1 into four cheap convs.

    Rank R: `rank` as given, or the rank keeping `rank-ratio` of the kernel's parameters (0.5 when
    neither is given), rounded to a multiple of `align` where possible. The ALS fit starts from the
    leading singular vectors of the kernel's unfoldings, padded with seeded random columns where R
    exceeds a mode's size, and runs at most `max-iters` sweeps (from seed 0, 100 sweeps left one
    of 30 random exact rank-3 8×6×3×3 kernels unrecovered); `restarts=N` fits from N seeds and
    keeps the closest (N times the time, about a second per fit for a 512×512×3×3 kernel at R=64;
    a rank no larger than every mode has no random columns, so restarts are skipped). Skips what
    `lowrank-tucker` skips (grouped convs, 1×1, dynamic or shared kernels, subgraphs); the gate
    refuses what does not remove `min-gain` of params and MACs.
    """

    name = "lowrank-cp"

    @dataclasses.dataclass(frozen=True)
    class Options:
        rank: int | None = None
        rank_ratio: float | None = None
        min_gain: float = 0.1
        align: int = 8
        max_iters: int = 100
        restarts: int = 1

        def __post_init__(self) -> None:
            check_rank_options(rank=self.rank, rank_ratio=self.rank_ratio)
            if self.max_iters < 1:
                raise ValueError("max-iters must be at least 1")
            if self.restarts < 1:
                raise ValueError("restarts must be at least 1")
            check_fraction("rank-ratio", self.rank_ratio)
            if self.rank is not None and self.rank < 1:
                raise ValueError("rank must be at least 1")
            check_common(self.min_gain, self.align)

    def candidates(self, model: ir.Model, skipped: Counter[str]) -> list[ConvLayer]:
        return convs(model, self.name, skipped)

    def _rank(self, w: np.ndarray) -> int:
        if self.options.rank is not None:
            return self.options.rank
        c_out, c_in, kh, kw = w.shape
        keep = self.options.rank_ratio if self.options.rank_ratio is not None else DEFAULT_KEEP
        chosen = max(1, int(keep * w.size / (c_in + kh + kw + c_out)))
        return lrm.round_rank(chosen, self.options.align, chosen)

    def decompose(self, layer: ConvLayer, names: u.NameScope, taken: set[str]) -> LayerRecord | str:
        w = layer.kernel
        c_out, c_in, kh, kw = w.shape
        rank = self._rank(w)
        count, in_hw, out_hw = conv_sizes(layer)
        params_after, macs_after = lrm.cp_cost(c_out, c_in, kh, kw, rank, out_hw, in_hw)
        params = (w.size, params_after)
        macs = (count * out_hw[0] * out_hw[1] * w.size, count * macs_after)
        refused = gate(params, macs, self.options.min_gain)
        if refused is not None:
            return refused
        factors, error = None, np.inf
        restarts = self.options.restarts if rank > min(w.shape) else 1  # otherwise every start is the same
        for seed in range(SEED, SEED + restarts):  # ALS can stall in a swamp: keep the best start
            trial = lrm.cp_conv(w, rank, seed, n_iter_max=self.options.max_iters)
            trial_error = relative_error(w, lrm.cp_reconstruct(*trial))
            if trial_error < error:
                factors, error = trial, trial_error
        pw_in, vertical, horizontal, pw_out = factors
        rep = Replacement(layer.node, layer.weight, self.name, names, taken)
        batch, (h_in, w_in), (h_out, w_out) = conv_dims(layer)
        h = rep.op("Conv", [layer.x, rep.weight_value("cp_in", pw_in)], "cp_in", [batch, rank, h_in, w_in])
        h = rep.op("Conv", [h, rep.weight_value("cp_vertical", vertical)], "cp_vertical",
                   [batch, rank, h_out, w_in], group=rank, **conv_attributes(layer, (0,)))
        h = rep.op("Conv", [h, rep.weight_value("cp_horizontal", horizontal)], "cp_horizontal",
                   [batch, rank, h_out, w_out], group=rank, **conv_attributes(layer, (1,)))
        y = rep.op("Conv", [h, rep.weight_value("cp_out", pw_out), layer.bias], "cp_out", None)
        rep.commit(y)
        return LayerRecord(node=layer.node.name or "", op="Conv", method="cp", ranks=(rank,),
                           params=(params[0], rep.params), macs=macs, weight_error=error)

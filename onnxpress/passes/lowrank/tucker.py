"""LowRankTuckerPass: a k×k Conv as Conv 1×1 → Conv k×k → Conv 1×1 (Tucker-2 on the channel modes).

`lowrank-tucker{rank-ratio= energy= ranks= min-gain=0.1 align=8 hooi-iters=5
rank-select=spectra|proportional refit=false auto-ridge=true ridge=0.03 max-samples=64}` factors a group=1
Conv kernel W [Cout, Cin, kh, kw] ≈ core ×₀ U_out ×₁ U_in and emits Conv 1×1 (Cin → r_in, no padding, at the
input resolution), the core Conv (r_in → r_out, with the original strides / pads / dilations /
auto_pad) and Conv 1×1 (r_out → Cout, with the original bias). A channel mode kept at full rank
(r_in = Cin: a 3-channel image input, say) gets no 1×1 conv; its factor folds into the core
(Tucker-1), so the chain has two convs. On ORT's CPU EP a 3.8× MAC cut is
about 1.9× faster (../shared/REFERENCES.md), so the gate asks for params and MACs to drop.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter

import numpy as np
import onnx_ir as ir

from onnxpress.passes.base import PassResult
from onnxpress.passes.cleanup import _util as u
from onnxpress.passes.lowrank import math as lrm
from onnxpress.passes.lowrank._base import DEFAULT_KEEP, LayerwisePass, check_common, check_rank_options
from onnxpress.passes.lowrank._emit import Replacement
from onnxpress.passes.lowrank._layers import ConvLayer, conv_attributes, conv_dims, conv_sizes, convs
from onnxpress.passes.lowrank._records import LayerRecord, check_fraction, gate, relative_error
from onnxpress.passes.manager import PassContext
from onnxpress.passes.pruning.layers import RefitLayer
from onnxpress.passes.pruning.reconstruct import refit_layer
from onnxpress.passes.registry import register_pass

__all__ = ["LowRankTuckerPass"]

logger = logging.getLogger(__name__)

#: Output pixels per calibration feed the refit of one chain reads (a random subset above that).
REFIT_ROWS_PER_FEED = 2048

@register_pass
class LowRankTuckerPass(LayerwisePass):
    """Tucker-2 decomposition of group=1 2-D Conv kernels larger than 1×1.

    Ranks (r_out, r_in): `ranks=R_OUT,R_IN` as given, or per channel mode the smallest rank keeping
    `energy` of the unfolding's squared singular values, or the ranks keeping `rank-ratio` of the
    kernel's parameters (0.5 when no option is given); chosen ranks are rounded to multiples of
    `align` where that stays below the channel count. With `rank-ratio`, `rank-select=spectra`
    (the default) takes the pair whose HOSVD keeps the most of the kernel within the parameter
    budget (`math.tucker_ranks_by_spectra`: it keeps the output channels of a wide-to-narrow conv,
    where ranks proportional to the channel counts cut PP-OCRv4 rec's 480 → 60 convs to 8 outputs),
    `rank-select=proportional` ranks proportional to the channel counts.
    Skips grouped and depthwise convs, 1×1 and 1-D / 3-D convs, dynamic or shared kernels, custom domains and subgraphs; the gate refuses what
    does not remove `min-gain` of params and MACs. The factors are the HOSVD refined by at most
    `hooi-iters` HOOI sweeps (0: HOSVD only); deterministic, about a second per 512-channel 3×3
    kernel.

    `refit=true` (needs calibration data; without it the pass warns and skips the refit) refits
    the last conv of every chain — its 1×1 conv and bias, or the core where the output mode kept
    full rank — by ridge least squares so that, fed what the decomposed model computes, it
    reproduces the original conv's output on the calibration feeds (pruning's reconstruction;
    chains in graph order, so each fit sees the refitted chains before it). `auto-ridge=true` picks
    the damping per chain on held-out feeds (else `ridge`); a fit that does not lower the error is
    not written.
    The weight-only factors keep the kernel; the refit keeps the layer's outputs: PP-OCRv4 rec's
    three k×k convs at 50 % of their parameters keep an output cosine of 0.67 without it.
    """

    name = "lowrank-tucker"

    @dataclasses.dataclass(frozen=True)
    class Options:
        rank_ratio: float | None = None
        energy: float | None = None
        ranks: tuple[int, ...] = ()
        min_gain: float = 0.1
        align: int = 8
        hooi_iters: int = 5
        rank_select: str = "spectra"
        refit: bool = False
        auto_ridge: bool = True  # choose the ridge per chain on held-out calibration feeds
        ridge: float = 0.03  # used when auto-ridge=false, or with too few feeds to hold some out
        max_samples: int = 64

        def __post_init__(self) -> None:
            check_rank_options(rank_ratio=self.rank_ratio, energy=self.energy, ranks=self.ranks or None)
            if self.hooi_iters < 0:
                raise ValueError("hooi-iters must be non-negative")
            check_fraction("rank-ratio", self.rank_ratio)
            check_fraction("energy", self.energy, closed_high=True)
            if self.ranks and (len(self.ranks) != 2 or min(self.ranks) < 1):
                raise ValueError("ranks must be two positive integers: R_OUT,R_IN")
            check_common(self.min_gain, self.align)
            if not self.ridge > 0.0:
                raise ValueError("ridge must be positive")
            if self.rank_select not in ("proportional", "spectra"):
                raise ValueError("rank-select must be proportional or spectra")
            if self.max_samples < 1:
                raise ValueError("max-samples must be at least 1")

    def candidates(self, model: ir.Model, skipped: Counter[str]) -> list[ConvLayer]:
        return convs(model, self.name, skipped)

    def run(self, model: ir.Model, am: object) -> PassResult:
        opts = self.options
        ctx = PassContext.current()
        feeds = ctx.feeds(opts.max_samples) if opts.refit else []
        if opts.refit and (ctx.runner is None or not feeds):
            ctx.diagnose("lowrank-tucker: refit=true needs a runner and calibration data; the context has none: "
                         "chains not refitted")
            feeds = []
        original = model.clone() if feeds else None
        self._last: dict[int, str] = {}  # id(last conv of a chain) -> the decomposed node's name
        out = super().run(model, am)
        if original is not None and self._last:
            out.stats["refits"] = self._refit_chains(original, model, ctx.runner, feeds)
        return out

    def _refit_chains(self, original: ir.Model, model: ir.Model, runner: object, feeds: list) -> dict[str, object]:
        """Refit the last conv of every chain, in graph order (see the class docstring)."""
        ridge = None if self.options.auto_ridge else self.options.ridge
        rng = np.random.default_rng(0)
        refits: dict[str, object] = {}
        for node in [node for node in model.graph if id(node) in self._last]:
            bias = node.inputs[2] if len(node.inputs) > 2 else None
            refits[self._last[id(node)]] = refit_layer(RefitLayer(node, node.inputs[1], bias), original, model, runner,
                                                       feeds, ridge, REFIT_ROWS_PER_FEED, rng)
        done = sum(bool(r.get("refitted")) for r in refits.values())
        logger.info("%s: refitted %d of %d chains", self.name, done, len(refits))
        return refits

    def _ranks(self, w: np.ndarray) -> tuple[int, int]:
        opts = self.options
        c_out, c_in = w.shape[:2]
        if opts.ranks:
            return min(opts.ranks[0], c_out), min(opts.ranks[1], c_in)
        if opts.energy is not None:
            r_out = lrm.rank_for_energy(lrm.singular_values(w.reshape(c_out, -1)), opts.energy)
            r_in = lrm.rank_for_energy(lrm.singular_values(np.moveaxis(w, 1, 0).reshape(c_in, -1)), opts.energy)
        else:
            keep = opts.rank_ratio if opts.rank_ratio is not None else DEFAULT_KEEP
            if opts.rank_select == "spectra":
                return lrm.tucker_ranks_by_spectra(w, keep, opts.align)
            r_out, r_in = lrm.tucker_ranks_for_ratio(w.shape, keep)
        return lrm.round_rank(r_out, opts.align, c_out), lrm.round_rank(r_in, opts.align, c_in)

    def decompose(self, layer: ConvLayer, names: u.NameScope, taken: set[str]) -> LayerRecord | str:
        w = layer.kernel
        c_out, c_in, kh, kw = w.shape
        r_out, r_in = self._ranks(w)
        # A mode kept at full rank needs no 1x1 conv: its factor folds into the core (Tucker-1).
        keep_first, keep_last = r_in < c_in, r_out < c_out
        count, in_hw, out_hw = conv_sizes(layer)
        params_after, macs_after = lrm.tucker2_cost(c_out, c_in, kh, kw, r_out, r_in, out_hw, in_hw)
        if not keep_first:
            params_after, macs_after = params_after - c_in * r_in, macs_after - in_hw[0] * in_hw[1] * c_in * r_in
        if not keep_last:
            params_after, macs_after = params_after - c_out * r_out, macs_after - out_hw[0] * out_hw[1] * c_out * r_out
        params = (w.size, params_after)
        macs = (count * out_hw[0] * out_hw[1] * w.size, count * macs_after)
        refused = gate(params, macs, self.options.min_gain)
        if refused is not None:
            return refused
        first, core, last = lrm.tucker2_conv(w, (r_out, r_in), n_iter_max=self.options.hooi_iters)
        error = relative_error(w, lrm.tucker2_reconstruct(first, core, last))
        if not keep_first:
            core = np.einsum("rshw,si->rihw", core, first[:, :, 0, 0])
        if not keep_last:
            core = np.einsum("or,rihw->oihw", last[:, :, 0, 0], core)
        rep = Replacement(layer.node, layer.weight, self.name, names, taken)
        batch, in_hw_dims, out_hw_dims = conv_dims(layer)
        h = layer.x
        if keep_first:
            h = rep.op("Conv", [h, rep.weight_value("tucker_first", first)], "tucker_first", [batch, r_in, *in_hw_dims])
        h = rep.op("Conv", [h, rep.weight_value("tucker_core", core), None if keep_last else layer.bias],
                   "tucker_core", [batch, r_out, *out_hw_dims] if keep_last else None, **conv_attributes(layer))
        if keep_last:
            h = rep.op("Conv", [h, rep.weight_value("tucker_last", last), layer.bias], "tucker_last", None)
        rep.commit(h)
        if hasattr(self, "_last"):  # set by run
            self._last[id(rep.nodes[-1])] = layer.node.name or rep.nodes[-1].name
        method = "tucker2" if keep_first and keep_last else "tucker1"
        return LayerRecord(node=layer.node.name or "", op="Conv", method=method,
                           ranks=(r_out, r_in), params=(params[0], rep.params), macs=macs, weight_error=error)

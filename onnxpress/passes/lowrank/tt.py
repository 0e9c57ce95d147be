"""LowRankTtPass: a MatMul weight as a tensor-train matrix (MPO), contracted by a MatMul chain.

`lowrank-tt{max-rank=16 min-gain=0.1 in-factors= out-factors= include= exclude=}` factors W [K, N],
K = i₁⋯i_d, N = j₁⋯j_d, as W[(i₁..i_d), (j₁..j_d)] = G₁[i₁, j₁] ⋯ G_d[i_d, j_d] with cores
G_k [r_{k-1}, i_k, j_k, r_k] (r₀ = r_d = 1) and emits, for x [..., K]:

    Reshape [-1, i₁..i_d] → Transpose → Reshape [rows, i₁]
    per core k: MatMul with G_k as [r_{k-1}·i_k, j_k·r_k], then (k < d) Reshape [i_{k+1}, -1, r_k]
               → Transpose (1, 2, 0) → Reshape [rows, r_k·i_{k+1}]
    Reshape [..., N]

The rows of the running matrix are (i_{k+1}..i_d, batch, j₁..j_{k-1}), so every step is one
MatMul and a rotation; the chain beats an Einsum chain on ORT's CPU EP (../shared/REFERENCES.md).
Tensor-train cuts parameters but usually MULTIPLIES the MACs: the gate looks at parameters only
and the stats say how the MACs changed. Use it where memory or download size is the goal.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections import Counter
from collections.abc import Sequence

import numpy as np
import onnx_ir as ir

from onnxpress.passes.cleanup import _util as u
from onnxpress.passes.lowrank import math as lrm
from onnxpress.passes.lowrank._base import LayerwisePass, check_common
from onnxpress.passes.lowrank._closed_loop import in_scope
from onnxpress.passes.lowrank._emit import Replacement
from onnxpress.passes.lowrank._layers import LinearLayer, dims_of, linears
from onnxpress.passes.lowrank._records import LayerRecord, gate, relative_error
from onnxpress.passes.pruning.prune_channels import parse_ignore
from onnxpress.passes.registry import register_pass

__all__ = ["LowRankTtPass"]

logger = logging.getLogger(__name__)


@register_pass
class LowRankTtPass(LayerwisePass):
    """Tensor-train (MPO) decomposition of constant MatMul weights [K, N].

    The dims are split into d ≥ 2 factors automatically (or as `in-factors` / `out-factors` say,
    when their products are K and N); TT ranks are capped at `max-rank`. Applies where the
    parameters drop by at least `min-gain`, whatever happens to the MACs (reported per layer and
    in total). `include` / `exclude` (node names, `re:REGEX`, `op:TYPE`) restrict the layers, as
    in `lowrank-svd`. Skips Gemm, dynamic or shared weights, custom domains, subgraphs, and dims
    that do not split into two or more factors.
    """

    name = "lowrank-tt"

    @dataclasses.dataclass(frozen=True)
    class Options:
        max_rank: int = 16
        min_gain: float = 0.1
        in_factors: tuple[int, ...] = ()
        out_factors: tuple[int, ...] = ()
        include: tuple[str, ...] = ()
        exclude: tuple[str, ...] = ()

        def __post_init__(self) -> None:
            parse_ignore(tuple(self.include))
            parse_ignore(tuple(self.exclude))
            if self.max_rank < 1:
                raise ValueError("max-rank must be at least 1")
            check_common(self.min_gain)
            for key, factors in (("in-factors", self.in_factors), ("out-factors", self.out_factors)):
                if factors and (len(factors) < 2 or min(factors) < 1):
                    raise ValueError(f"{key} must be two or more positive integers")
            if self.in_factors and self.out_factors and len(self.in_factors) != len(self.out_factors):
                raise ValueError("in-factors and out-factors must have the same length")

    def candidates(self, model: ir.Model, skipped: Counter[str]) -> list[LinearLayer]:
        self._opset = u.default_opset(model)
        found = linears(model, ("MatMul",), self.name, skipped)
        return in_scope(found, self.options.include, self.options.exclude, skipped)

    def _factors(self, k: int, n: int) -> tuple[tuple[int, ...] | None, tuple[int, ...] | None] | str:
        in_f, out_f = self.options.in_factors or None, self.options.out_factors or None
        if in_f is not None and math.prod(in_f) != k:
            return "in-factors do not multiply to K"
        if out_f is not None and math.prod(out_f) != n:
            return "out-factors do not multiply to N"
        return in_f, out_f

    def decompose(self, layer: LinearLayer, names: u.NameScope, taken: set[str]) -> LayerRecord | str:
        w = layer.w_eff
        k, n = w.shape
        factors = self._factors(k, n)
        if isinstance(factors, str):
            return factors
        cores = lrm.tt_matrix(w, self.options.max_rank, in_factors=factors[0], out_factors=factors[1])
        if len(cores) < 2:
            return "dims do not split into two or more factors"
        if u.static_dims(layer.x) is None and self._opset < 10:
            return "dynamic leading dims need opset >= 10"  # Slice with inputs
        rows = layer.tokens or 1
        params = (k * n, lrm.tt_params(cores))
        macs = (rows * k * n, lrm.tt_macs(cores, rows))
        refused = gate(params, macs, self.options.min_gain, params_only=True)
        if refused is not None:
            return refused
        rep = Replacement(layer.node, layer.weight, self.name, names, taken)
        _emit(layer, cores, rep)
        return LayerRecord(node=layer.node.name or "", op="MatMul", method="tensor-train",
                           ranks=tuple(core.shape[3] for core in cores[:-1]),
                           params=(params[0], rep.params),  # the shape constants count too
                           macs=macs, weight_error=relative_error(w, lrm.tt_reconstruct(cores, k, n)))


def _emit(layer: LinearLayer, cores: Sequence[np.ndarray], rep: Replacement) -> None:
    in_f = [c.shape[1] for c in cores]
    out_f = [c.shape[2] for c in cores]
    d, n = len(cores), math.prod(out_f)
    x_dims = dims_of(layer.x)
    tokens = layer.tokens  # the leading dims flattened; None when some are unknown

    def rows(*counts: int) -> int | None:
        return None if tokens is None else tokens * math.prod(counts)

    t = rep.op("Reshape", [layer.x, rep.ints("tt_split_shape", [-1, *in_f])], "tt_split", [tokens, *in_f])
    t = rep.op("Transpose", [t], "tt_split_t", [*in_f[1:], tokens, in_f[0]], perm=[*range(2, d + 1), 0, 1])
    t = rep.op("Reshape", [t, rep.ints("tt_rows0_shape", [-1, in_f[0]])], "tt_rows0",
               [rows(*in_f[1:]), in_f[0]])
    for k, core in enumerate(cores):
        r0, i, j, r1 = core.shape
        t = rep.op("MatMul", [t, rep.weight_value(f"tt_core{k}", core.reshape(r0 * i, j * r1))], f"tt_core{k}",
                   [rows(*in_f[k + 1:], *out_f[:k]), j * r1])
        if k == d - 1:
            break
        nxt, rest = in_f[k + 1], rows(*in_f[k + 2:], *out_f[: k + 1])
        t = rep.op("Reshape", [t, rep.ints(f"tt_unfold{k}_shape", [nxt, -1, r1])], f"tt_unfold{k}", [nxt, rest, r1])
        t = rep.op("Transpose", [t], f"tt_rotate{k}", [rest, r1, nxt], perm=[1, 2, 0])
        t = rep.op("Reshape", [t, rep.ints(f"tt_rows{k + 1}_shape", [-1, r1 * nxt])], f"tt_rows{k + 1}",
                   [rest, r1 * nxt])
    static = u.static_dims(layer.x)
    if static is not None:
        shape = rep.ints("tt_merge_shape", [*static[:-1], n])
    else:  # leading dims known only at run time: Shape(x)[:-1] ++ [N]
        int64 = ir.DataType.INT64
        rank_known = x_dims is not None
        full = rep.op("Shape", [layer.x], "tt_shape", [len(x_dims)] if rank_known else None, dtype=int64)
        lead = rep.op("Slice", [full, rep.ints("tt_lead_start", [0]), rep.ints("tt_lead_end", [-1])], "tt_lead",
                      [len(x_dims) - 1] if rank_known else None, dtype=int64)
        shape = rep.op("Concat", [lead, rep.ints("tt_cols", [n])], "tt_merge_shape",
                       [len(x_dims)] if rank_known else None, dtype=int64, axis=0)
    y = rep.op("Reshape", [t, shape], "tt_merge", None)  # commit gives it the original output's shape
    rep.commit(y)

"""Closed-loop (sequential) SVD, the refit of following layers, and the layer scope of a pass.

Closed loop: a layer's factors are fitted against what the *compressed* model feeds it, X_c, so
that X_c·A·B reproduces the *original* layer's output Y = X·W (errors of the layers decomposed
before it are compensated, as in GPTQ / SVD-LLM v2). With `G = X_cᵀX_c` and the ridge solution
`W* = (G + λI)⁻¹ (X_cᵀY + λW)`, `‖X_c M − Y‖² = ‖X_c (M − W*)‖² + const`, so the best rank-r
`A·B` is the whitened SVD of `W*` under `G` (`math.whitened_svd`). The statistics
`[X_c 1]ᵀ[X_c 1]`, `[X_c 1]ᵀY` and `ΣY²` are pruning's `GramAccumulator`: memory (K+1)·(K+1+N)
numbers per layer whatever the number of tokens; X_c and X come from one streamed run of both
models on the same feeds (`iter_values`), rows subsampled above `MAX_ROWS_PER_FEED` per feed.

With a bias to correct (a MatMul's bias Add, a Gemm's C), the second factor B and a bias
correction are refitted by ridge least squares given A, from the same statistics projected on
`[X_c A 1]` (no extra run). Linear layers that are *not* decomposed but follow a decomposed one
through element-wise ops only (W1 → bias → GELU → W2 with only W1 in scope) are refitted with
pruning's sequential least-squares reconstruction (`reconstruct.refit_layer`).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx_ir as ir

from onnxpress.ir import ops
from onnxpress.passes.lowrank import math as lrm
from onnxpress.passes.lowrank._layers import LinearLayer
from onnxpress.passes.pruning.calibration import GramAccumulator, iter_values
from onnxpress.passes.pruning.prune_channels import node_matches, parse_ignore
from onnxpress.passes.pruning.layers import RefitLayer, assign_tensor, bias_add, subsample
from onnxpress.passes.pruning.reconstruct import MAX_ROWS_PER_FEED

__all__ = [
    "ClosedLoopFit",
    "bias_value",
    "closed_loop_stats",
    "fit_closed_loop",
    "follower_layer",
    "followers",
    "in_scope",
]

logger = logging.getLogger(__name__)

_ELEMENTWISE = frozenset({ops.ELEMENTWISE_UNARY, ops.ELEMENTWISE_BINARY, ops.ACTIVATION})


# ----------------------------------------------------------------------------------------------
# scope
# ----------------------------------------------------------------------------------------------
def in_scope(layers: Sequence[Any], include: Sequence[str], exclude: Sequence[str], skipped: Counter[str]) -> list:
    """The layers whose node matches `include` (all when empty) and not `exclude`; patterns are
    node names, `re:REGEX` (searched in the node name) or `op:TYPE`. The rest count as skipped."""
    inc, exc = parse_ignore(tuple(include)), parse_ignore(tuple(exclude))
    kept = []
    for layer in layers:
        if (inc and not node_matches(layer.node, inc)) or (exc and node_matches(layer.node, exc)):
            skipped["out of scope (include / exclude)"] += 1
        else:
            kept.append(layer)
    return kept


# ----------------------------------------------------------------------------------------------
# statistics
# ----------------------------------------------------------------------------------------------
def closed_loop_stats(original: ir.Model, model: ir.Model, layers: Sequence[LinearLayer], runner: Any,
                      feeds: Sequence[Mapping[str, Any]], seed: int = 0,
                      cap: int = MAX_ROWS_PER_FEED) -> dict[int, GramAccumulator]:
    """{id(layer.node): statistics of `X_c [K] -> Y = X·W_eff [N]`} for the layers whose input
    exists (by name) in both models."""
    known = {v.name for node in original.graph for v in node.outputs if v.name}
    known |= {v.name for v in original.graph.inputs}
    todo = [layer for layer in layers if layer.x.name and layer.x.name in known]
    if not todo:
        return {}
    names = list(dict.fromkeys(layer.x.name for layer in todo))
    stats = {id(layer.node): GramAccumulator(layer.shape[0], layer.shape[1]) for layer in todo}
    rng = np.random.default_rng(seed)
    for values_o, values_c in iter_values(runner, [(original, names), (model, names)], feeds):
        picks: dict[str, np.ndarray] = {}
        for layer in todo:
            xo = layer.rows(np.asarray(values_o[layer.x.name]))
            xc = layer.rows(np.asarray(values_c[layer.x.name]))
            if xo.shape != xc.shape or xc.shape[1] != layer.shape[0]:
                logger.debug("'%s': inputs of shape %s / %s; not measured", layer.node.name, xo.shape, xc.shape)
                continue
            rows = picks.setdefault(layer.x.name, subsample(xc.shape[0], cap, rng))
            stats[id(layer.node)].update(xc[rows], xo[rows] @ layer.w_eff)
    return {key: acc for key, acc in stats.items() if acc.rows}


def _projected(acc: GramAccumulator, a: np.ndarray) -> GramAccumulator:
    """The statistics of `[X A 1] -> Y` from those of `[X 1] -> Y` (A: [K, r])."""
    k, r = a.shape
    t = np.zeros((k + 1, r + 1))
    t[:k, :r] = a
    t[k, r] = 1.0
    out = GramAccumulator(r, acc.n_out)
    out.gram = t.T @ acc.gram @ t
    out.cross = t.T @ acc.cross
    out.target_sq, out.rows = acc.target_sq, acc.rows
    return out


class ClosedLoopFit:
    """Factors `A [K, r]`, `B [r, N]`, a bias correction (or None) and the relative output error
    against the original layer on the calibration rows (before and after the fit)."""

    def __init__(self, a: np.ndarray, b: np.ndarray, delta: np.ndarray | None, error: float, error_open: float):
        self.a, self.b, self.delta, self.error, self.error_open = a, b, delta, error, error_open


def fit_closed_loop(w: np.ndarray, acc: GramAccumulator, rank: int, ridge: float, *,
                    refit_bias: bool = False, damping: float = lrm.DEFAULT_DAMPING) -> ClosedLoopFit:
    """Rank-`rank` factors of the closed-loop target (module docstring); `refit_bias` also
    refits B with a bias correction given A; `damping` is the whitening's (`math.whitened_svd`). `error_open` is the error of the open-loop
    whitened SVD of W itself on the same compressed inputs, for the record."""
    k = w.shape[0]
    gram = acc.gram[:k, :k]
    target, _ = acc.solve(ridge, bias=False, prior=w)
    a, b = lrm.whitened_svd(target, gram, rank, eps=damping)
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    delta = None
    if refit_bias:
        proj = _projected(acc, a)
        b_new, d_new = proj.solve(ridge, bias=True, prior=b)
        if proj.relative_error(b_new, d_new) < proj.relative_error(b, None):
            b, delta = b_new, d_new
    a_open, b_open = lrm.whitened_svd(w, gram, rank, eps=damping)
    error_open = acc.relative_error(np.asarray(a_open, np.float64) @ np.asarray(b_open, np.float64), None)
    return ClosedLoopFit(a, b, delta, acc.relative_error(a @ b, delta), error_open)


# ----------------------------------------------------------------------------------------------
# bias of a linear layer
# ----------------------------------------------------------------------------------------------
def bias_value(layer: LinearLayer, graph: ir.Graph) -> ir.Value | None:
    """The constant a bias correction can be added to: a Gemm's C (one value per output, read
    by this node only, beta != 0) or the constant of the Add that alone consumes a MatMul."""
    n = layer.shape[1]
    if layer.node.op_type == "MatMul":
        return bias_add(layer.node, graph, n)
    c = layer.bias
    if c is None or layer.beta == 0.0 or c.const_value is None or c.name not in graph.initializers:
        return None
    if c.const_value.size != n or any(use.node is not layer.node for use in c.uses()) or c.is_graph_output():
        return None
    return c


def add_to_bias(value: ir.Value, delta: np.ndarray, scale: float = 1.0) -> None:
    """`value += delta / scale`, as a new tensor of the same dtype and shape."""
    base = np.asarray(value.const_value.numpy(), dtype=np.float64)
    assign_tensor(value, base + (delta / scale).reshape(base.shape))


# ----------------------------------------------------------------------------------------------
# following layers
# ----------------------------------------------------------------------------------------------
def _is_constant(value: ir.Value) -> bool:
    producer = value.producer()
    return value.const_value is not None or (producer is not None and producer.op_type == "Constant")


def followers(node: ir.Node) -> list[ir.Node]:
    """MatMul / Gemm nodes with a constant weight that read a value computed from `node`'s
    output alone through element-wise ops (bias Add, activations, a decomposed GELU)."""
    start = node.outputs[0]
    region = {id(start)}
    frontier, seen, found = [start], set(), []
    while frontier:
        value = frontier.pop()
        for use in value.uses():
            user = use.node
            if id(user) in seen:
                continue
            if user.op_type in ("MatMul", "Gemm") and use.idx == 0:
                if len(user.inputs) > 1 and user.inputs[1] is not None and _is_constant(user.inputs[1]):
                    seen.add(id(user))
                    found.append(user)
                continue
            if not ops.metatypes(user) & _ELEMENTWISE or user.domain not in ("", "ai.onnx"):
                continue
            if any(v is not None and id(v) not in region and not _is_constant(v) for v in user.inputs):
                continue  # reads something else too (a residual): may become ready through another input
            seen.add(id(user))
            for out in user.outputs:
                region.add(id(out))
                frontier.append(out)
    return found


def follower_layer(layer: LinearLayer, graph: ir.Graph) -> RefitLayer:
    """A linear layer as pruning's reconstruction sees it (weight and bias to refit)."""
    if layer.node.op_type == "MatMul":
        return RefitLayer(layer.node, layer.weight, bias_add(layer.node, graph, layer.shape[1]))
    alpha = layer.node.attributes.get("alpha")
    return RefitLayer(layer.node, layer.weight, bias_value(layer, graph),
                  alpha=float(alpha.value) if alpha is not None else 1.0, beta=layer.beta)

"""Reconstruction-aware importance: the output error a channel's removal leaves after a refit.

For a consumer layer `Y = X W + b` fitted by least squares on calibration rows with Gram matrix
`G = [X 1]ᵀ[X 1]`, removing input channel j (its rows `W_j`, one row per kernel tap) and refitting
the remaining rows optimally raises the squared output error by

    ΔE_j = tr(W_jᵀ (G⁻¹_jj)⁻¹ W_j)

(the Optimal Brain Surgeon cost of Hassibi & Stork, in the structured block form used by
layer-wise pruners such as OBC / ZipLM). This is the error `reconstruct=true` is left with when
only channel j goes, so it ranks channels by what the refit cannot recover; magnitude scores rank
them by what is there before any refit. A class's score is the sum over the consumer layers that
read its channels (Conv with group=1, Gemm, MatMul with a constant weight). Classes no consumer
measures (a group whose channels only reach a graph output or a depthwise conv, say) keep their
L2 score, rescaled to the measured scores of their group where it has some.

Statistics stream like the reconstruction's: one Gram matrix per consumer, rows subsampled per
feed, the model's values computed in chunks (`calibration.iter_values`).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Any

import numpy as np
import onnx_ir as ir

from onnxpress.passes.pruning.calibration import GramAccumulator, iter_values
from onnxpress.passes.pruning.dependency import ChannelDependencies, Member
from onnxpress.passes.pruning.layers import RefitLayer, unsupported_transpose
from onnxpress.passes.pruning.reconstruct import _row_cap

__all__ = ["obs_scores"]

logger = logging.getLogger(__name__)

#: Damping of the Gram matrix before inversion, relative to its mean diagonal.
DAMPING = 0.01
_CONSUMER_ROLES = ("in-channels", "in-features")
_CONSUMER_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def _consumers(deps: ChannelDependencies, classes: set[int]) -> list[tuple[RefitLayer, Member]]:
    """(layer, member) for every constant-weight linear consumer that reads a class in `classes`."""
    found = []
    seen: set[int] = set()
    for m in deps.members:
        node = m.node
        if m.role not in _CONSUMER_ROLES or id(node) in seen or node.op_type not in _CONSUMER_OPS:
            continue
        if len(node.inputs) < 2 or node.inputs[1] is not m.value or m.value.const_value is None:
            continue
        group = node.attributes.get("group")
        if node.op_type in ("Conv", "ConvTranspose") and group is not None and group.value != 1:
            continue
        if node.op_type == "ConvTranspose" and unsupported_transpose(node, tuple(m.value.const_value.shape[2:])):
            continue
        if not node.inputs[0] or not node.inputs[0].name or not node.outputs[0].name:
            continue
        if node.op_type not in ("Conv", "ConvTranspose") and len(m.value.const_value.shape) != 2:
            continue
        if not any(deps.find(int(e)) in classes for e in m.elements):
            continue
        layer = RefitLayer(node, m.value, None)
        if m.axis != layer.weight_in_axis:
            continue
        seen.add(id(node))
        found.append((layer, m))
    return found


def _inverse(acc: GramAccumulator, damping: float) -> np.ndarray:
    """(G + λI)⁻¹ of the augmented Gram matrix, λ = `damping` · mean diagonal (bias not damped)."""
    k = acc.n_in
    gram = acc.gram.copy()
    gram[np.arange(k), np.arange(k)] += damping * max(float(np.mean(np.diag(gram)[:k])), 1e-12)
    try:
        return np.linalg.inv(gram)
    except np.linalg.LinAlgError:
        return np.linalg.pinv(gram)


def _costs(inverse: np.ndarray, weight: np.ndarray, index: np.ndarray) -> np.ndarray:
    """ΔE of removing each row set `index[i]` alone (batched block OBS cost)."""
    blocks = inverse[index[:, :, None], index[:, None, :]]  # [n, t, t]
    weights = weight[index]  # [n, t, n_out]
    try:
        solved = np.linalg.solve(blocks, weights)
    except np.linalg.LinAlgError:
        solved = np.linalg.pinv(blocks) @ weights
    return np.maximum(np.einsum("nto,nto->n", weights, solved), 0.0)


def _block_costs(layer: RefitLayer, acc: GramAccumulator, damping: float) -> np.ndarray:
    """ΔE of removing each input channel of `layer` alone, refitting the rest (and the bias)."""
    taps = layer.taps
    index = np.arange(acc.n_in // taps)[:, None] * taps + np.arange(taps)[None, :]
    w = layer.effective()[0]
    weight = np.vstack([w, np.zeros((1, w.shape[1]))])
    return _costs(_inverse(acc, damping), weight, index)


class _Part:
    """One consumer's view of one group: its inverse Gram, weights and each class's rows."""

    def __init__(self, inverse: np.ndarray, weight: np.ndarray, rows: dict[int, np.ndarray]) -> None:
        self.inverse, self.weight, self.rows = inverse, weight, rows

    def costs(self, classes: list[int]) -> np.ndarray:
        have = [i for i, c in enumerate(classes) if c in self.rows]
        out = np.zeros(len(classes))
        if not have:
            return out
        sizes = {len(self.rows[classes[i]]) for i in have}
        if len(sizes) == 1:
            index = np.stack([self.rows[classes[i]] for i in have])
            out[have] = _costs(self.inverse, self.weight, index)
        else:
            for i in have:
                out[i] = _costs(self.inverse, self.weight, self.rows[classes[i]][None, :])[0]
        return out

    def remove(self, classes: list[int]) -> float:
        """Remove the rows of `classes` jointly, refitting the rest (OBS update); the ΔE it costs."""
        rows = [self.rows.pop(c) for c in classes if c in self.rows]
        if not rows:
            return 0.0
        index = np.concatenate(rows)
        block = self.inverse[np.ix_(index, index)]
        cols = self.inverse[:, index]
        w = self.weight[index]
        solved_w = np.linalg.lstsq(block, w, rcond=None)[0]
        cost = float(np.einsum("ij,ij->", w, solved_w))
        self.weight -= cols @ solved_w
        self.inverse -= cols @ np.linalg.lstsq(block, cols.T, rcond=None)[0]
        return max(cost, 0.0)


def _greedy(parts: list[_Part], classes: list[int], steps: int) -> dict[int, float]:
    """Scores from greedy joint removal: the cumulative ΔE when each class went (OBS order).

    Removes the cheapest classes a chunk at a time (1/128 of the group, at least one), refitting
    after each chunk, for `steps` classes; the rest score the total so far plus their own cost.
    """
    alive = list(classes)
    chunk = max(1, len(classes) // 128)
    scores: dict[int, float] = {}
    total = 0.0
    while alive:
        costs = sum((part.costs(alive) for part in parts), np.zeros(len(alive)))
        if len(scores) >= steps:
            scores.update({c: total + float(v) for c, v in zip(alive, costs)})
            break
        order = np.argsort(costs, kind="stable")[:chunk]
        gone = [alive[i] for i in order]
        for i in order:
            scores[alive[i]] = total + float(costs[i])
        total = max(total + sum(part.remove(gone) for part in parts), max(scores[c] for c in gone))
        alive = [c for c in alive if c not in set(gone)]
    return scores


def obs_scores(model: ir.Model, deps: ChannelDependencies, classes: set[int], fallback: dict[int, float],
               ctx: Any, limit: int | None, *, max_fraction: float = 1.0, damping: float = DAMPING,
               seed: int = 0) -> dict[int, float]:
    """{class: score}, lower = removed first, from greedy OBS over each group's consumers.

    A class's score is the cumulative output error (summed over the consumers that read it) when
    greedy joint removal reaches it; `max_fraction` of each group is ranked that way, the rest
    by their cost at that point. Classes no consumer measures get `fallback` scores (rescaled to
    their group's measured scores where it has some). Returns `fallback` unchanged when the
    context has no runner or data.
    """
    feeds = ctx.feeds(limit)
    consumers = _consumers(deps, classes)
    if ctx.runner is None or not feeds or not consumers:
        return dict(fallback)
    rng = np.random.default_rng(seed)
    accs = [GramAccumulator(layer.effective()[0].shape[0], 1) for layer, _m in consumers]
    names = [n for layer, _m in consumers for n in (layer.node.inputs[0].name, layer.node.outputs[0].name)]
    for (values,) in iter_values(ctx.runner, [(model, names)], feeds):
        for (layer, _m), acc in zip(consumers, accs):
            x = values[layer.node.inputs[0].name]
            y = values[layer.node.outputs[0].name]
            x_rows, _ = layer.rows(x, y, rng, _row_cap(layer, None))
            acc.update(x_rows, np.zeros((x_rows.shape[0], 1)))
    # per consumer: which rows of its effective weight each class owns
    owned: list[dict[int, np.ndarray]] = []
    for layer, member in consumers:
        rows: dict[int, list[int]] = defaultdict(list)
        for position, element in enumerate(member.elements.tolist()):
            c = deps.find(int(element))
            if c in classes:
                rows[c].extend(range(position * layer.taps, (position + 1) * layer.taps))
        owned.append({c: np.asarray(r, dtype=np.int64) for c, r in rows.items()})
    scores: dict[int, float] = {}
    for group in deps.groups():
        wanted = [c for c in group.prunable if c in classes]
        if not wanted:
            continue
        parts = []
        for (layer, _m), acc, rows in zip(consumers, accs, owned):
            mine = {c: rows[c] for c in wanted if c in rows}
            if mine and acc.rows:
                w = layer.effective()[0]
                parts.append(_Part(_inverse(acc, damping), np.vstack([w, np.zeros((1, w.shape[1]))]), mine))
        measured = {c for part in parts for c in part.rows}
        if not measured:
            continue
        ranked = _greedy(parts, [c for c in wanted if c in measured], int(np.ceil(max_fraction * len(wanted))))
        scale = np.mean(list(ranked.values())) / max(np.mean([fallback.get(c, 0.0) for c in ranked]), 1e-30)
        for c in wanted:
            scores[c] = ranked[c] if c in ranked else fallback.get(c, 0.0) * scale
    for c in classes:
        scores.setdefault(c, fallback.get(c, 0.0))
    logger.debug("obs importance: %d consumer layers over %d feeds", len(consumers), len(feeds))
    return scores

"""Rank allocation from measured end-to-end sensitivity (`lowrank-svd{allocation=measured}`).

The spectral allocation (`math.allocate_ranks`) prices a layer's rank by its own relative output
error. That misses how the error reaches the model's outputs: on PP-OCRv4 rec it spends the whole
budget on the CTC head, where errors flip decoded characters. Here each candidate layer is
truncated alone, at a few ranks, in a clone of the model (the weight replaced by its rank-r
approximation, same shape: no graph surgery), and the clone's outputs on a few calibration feeds
are compared with the original's. The greedy allocation then takes the step with the smallest
measured increase of output error per parameter saved, assuming errors of different layers add
up. Cost: one model run on `MEASURE_FEEDS` feeds per (layer, rank) pair.
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx_ir as ir

from onnxpress.passes.cleanup import _util as u
from onnxpress.passes.lowrank import math as lrm
from onnxpress.passes.lowrank._layers import LinearLayer

__all__ = ["MEASURE_FEEDS", "allocate_from_curves", "candidate_ranks", "measure_curves"]

logger = logging.getLogger(__name__)

#: Calibration feeds each trial runs on.
MEASURE_FEEDS = 16
#: Fractions of a layer's parameters the trial ranks keep.
TRIAL_KEEPS = (0.9, 0.75, 0.6, 0.45, 0.3, 0.15)


def candidate_ranks(k: int, n: int, align: int, min_gain: float) -> list[int]:
    """The trial ranks of a [K, N] layer, descending: aligned, below full rank, and each saving
    at least `min_gain` of the layer's parameters."""
    limit = min(k, n)
    ranks = set()
    for keep in TRIAL_KEEPS:
        rank = lrm.round_rank(lrm.rank_for_param_ratio(k, n, keep), align, limit)
        if rank < limit and rank * (k + n) <= (1.0 - min_gain) * k * n:
            ranks.add(rank)
    return sorted(ranks, reverse=True)


def _set_weight(node: ir.Node, w_eff: np.ndarray) -> bool:
    """Give `node` (MatMul / Gemm) the effective weight `w_eff` [K, N]; False where its weight is
    not an initializer it can replace."""
    value = node.inputs[1]
    if value is None or value.const_value is None or value.producer() is not None:
        return False
    array = np.asarray(w_eff, np.float64)
    if node.op_type == "Gemm":
        array = array / u.attr_float(node, "alpha", 1.0)
        if u.attr_int(node, "transB", 0):
            array = array.T
    dtype = value.const_value.numpy().dtype
    value.const_value = ir.tensor(np.ascontiguousarray(array.astype(dtype)), name=value.name)
    return True


def _output_error(reference: Sequence[Mapping[str, Any]], outputs: Sequence[Mapping[str, Any]]) -> float:
    """Σ‖y − y₀‖² / Σ‖y₀‖² over every output of every feed."""
    num = den = 0.0
    for ref, out in zip(reference, outputs):
        for name, y0 in ref.items():
            y0 = np.asarray(y0, np.float64)
            num += float(np.sum((np.asarray(out[name], np.float64) - y0) ** 2))
            den += float(np.sum(y0 * y0))
    return num / den if den > 0.0 else 0.0


def measure_curves(model: ir.Model, layers: Sequence[LinearLayer], grams: Mapping[int, np.ndarray], runner: Any,
                   feeds: Sequence[Mapping[str, Any]], align: int, min_gain: float) -> list[dict[int, float]]:
    """Per layer, {rank: relative output error of the model with only that layer truncated}
    (whitened SVD where the layer has a Gram, plain SVD otherwise); empty where the weight
    cannot be swapped in a clone."""
    feeds = list(feeds[:MEASURE_FEEDS])
    reference = runner.run(model, feeds)
    position = {id(node): i for i, node in enumerate(model.graph)}
    curves: list[dict[int, float]] = []
    for layer in layers:
        curve: dict[int, float] = {}
        w, gram = layer.w_eff, grams.get(id(layer.node))
        for rank in candidate_ranks(*layer.shape, align, min_gain):
            a, b = lrm.whitened_svd(w, gram, rank) if gram is not None else lrm.truncated_svd(w, rank)
            trial = model.clone()
            if not _set_weight(list(trial.graph)[position[id(layer.node)]], np.asarray(a, np.float64) @ b):
                break
            curve[rank] = _output_error(reference, runner.run(trial, feeds))
        logger.debug("'%s': measured output error by rank %s", layer.node.name, curve)
        curves.append(curve)
    return curves


def allocate_from_curves(shapes: Sequence[tuple[int, int]], curves: Sequence[Mapping[int, float]],
                         keep: float) -> list[int | None]:
    """Ranks sharing the budget `keep · Σ K·N`: from every layer dense, repeatedly take the step
    (dense → the highest trial rank, or one trial rank to the next) with the smallest measured
    error increase per parameter saved. None for a layer left dense. Deterministic (ties go to
    the earlier layer)."""
    ladders = [sorted(curve, reverse=True) for curve in curves]
    state: list[int] = [-1] * len(shapes)  # index into the ladder; -1 = dense
    cost = float(sum(k * n for k, n in shapes))
    budget = keep * cost

    def step(i: int) -> tuple[float, int] | None:
        ladder, at = ladders[i], state[i]
        if at + 1 >= len(ladder):
            return None
        k, n = shapes[i]
        before_cost = k * n if at < 0 else ladder[at] * (k + n)
        before_err = 0.0 if at < 0 else curves[i][ladder[at]]
        new = ladder[at + 1]
        saved = before_cost - new * (k + n)
        return (max(curves[i][new] - before_err, 0.0) / max(saved, 1), i)

    heap = [entry for entry in (step(i) for i in range(len(shapes))) if entry is not None]
    heapq.heapify(heap)
    while cost > budget and heap:
        _, i = heapq.heappop(heap)
        k, n = shapes[i]
        before = k * n if state[i] < 0 else ladders[i][state[i]] * (k + n)
        state[i] += 1
        cost -= before - ladders[i][state[i]] * (k + n)
        nxt = step(i)
        if nxt is not None:
            heapq.heappush(heap, nxt)
    return [None if at < 0 else ladders[i][at] for i, at in enumerate(state)]

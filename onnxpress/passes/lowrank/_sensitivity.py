"""Rank allocation from measured end-to-end sensitivity (`lowrank-svd{allocation=measured}`).

The spectral allocation (`math.allocate_ranks`) prices a layer's rank by its own relative output
error. That misses how the error reaches the model's outputs: on PP-OCRv4 rec it spends the whole
budget on the CTC head, where errors flip decoded characters. Here each candidate layer is
truncated alone, at a few ranks, in a clone of the model (the weight replaced by its rank-r
approximation, same shape: no graph surgery), and the clone's outputs on a few calibration feeds
are compared with the original's. The greedy allocation then takes the step with the smallest
measured increase of output error per parameter saved, assuming errors of different layers add
up, and lands on the parameter budget: the step that meets it goes only as far as needed and
what is left is given back in `align` rank steps (`allocate_from_curves`), so the kept parameters
end less than one alignment step under the budget, never over it (more can be left only when
every decomposed layer already sits at its cost-gate rank). Cost: one model run on
`MEASURE_FEEDS` feeds per (layer, rank) pair; the allocation itself is arithmetic.
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

__all__ = ["LANDING_TOLERANCE", "MEASURE_FEEDS", "allocate_from_curves", "candidate_ranks", "measure_curves"]

logger = logging.getLogger(__name__)

#: Calibration feeds each trial runs on.
MEASURE_FEEDS = 16
#: Fractions of a layer's parameters the trial ranks keep.
TRIAL_KEEPS = (0.9, 0.75, 0.6, 0.45, 0.3, 0.15)
#: Unspent budget (fraction of the in-scope parameters) below which the allocation stops swapping.
LANDING_TOLERANCE = 0.005


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
                   feeds: Sequence[Mapping[str, Any]], align: int, min_gain: float,
                   damping: float = lrm.DEFAULT_DAMPING) -> list[dict[int, float]]:
    """Per layer, {rank: relative output error of the model with only that layer truncated}
    (whitened SVD with `damping` where the layer has a Gram, plain SVD otherwise); empty where the
    weight cannot be swapped in a clone."""
    feeds = list(feeds[:MEASURE_FEEDS])
    reference = runner.run(model, feeds)
    position = {id(node): i for i, node in enumerate(model.graph)}
    curves: list[dict[int, float]] = []
    for layer in layers:
        curve: dict[int, float] = {}
        w, gram = layer.w_eff, grams.get(id(layer.node))
        for rank in candidate_ranks(*layer.shape, align, min_gain):
            a, b = lrm.whitened_svd(w, gram, rank, eps=damping) if gram is not None else lrm.truncated_svd(w, rank)
            trial = model.clone()
            if not _set_weight(list(trial.graph)[position[id(layer.node)]], np.asarray(a, np.float64) @ b):
                break
            curve[rank] = _output_error(reference, runner.run(trial, feeds))
        logger.debug("'%s': measured output error by rank %s", layer.node.name, curve)
        curves.append(curve)
    return curves


def _max_rank(k: int, n: int, align: int, min_gain: float) -> int:
    """The largest multiple of `align` below full rank that still saves `min_gain` of a [K, N]
    layer's parameters (the cost gate's limit); 0 where none does."""
    limit = min(k, n) - 1
    rank = min(int((1.0 - min_gain) * k * n / (k + n) + 1e-9), limit)
    return rank // align * align


def _interpolated(shape: tuple[int, int], curve: Mapping[int, float]) -> Any:
    """The measured error of one layer as a function of its rank, linear in its parameter count
    between the trial ranks and up to the dense layer (error 0)."""
    k, n = shape
    ranks = sorted(curve)
    costs = [r * (k + n) for r in ranks] + [k * n]
    errors = [curve[r] for r in ranks] + [0.0]

    def error(rank: int) -> float:
        return float(np.interp(rank * (k + n), costs, errors))

    return error


def allocate_from_curves(shapes: Sequence[tuple[int, int]], curves: Sequence[Mapping[int, float]],
                         keep: float, align: int = 1, min_gain: float = 0.0) -> list[int | None]:
    """Ranks sharing the budget `keep · Σ K·N`, landing on it: the kept parameters end less than
    one alignment step (`align · (K + N)` of a decomposed layer that can still grow) under the
    budget, never over it; more is left only when every decomposed layer is at its cost-gate
    rank (a layer cannot save less than `min_gain` of itself).

    From every layer dense, repeatedly take the coarse step (dense → the highest trial rank, or
    one trial rank to the next) with the smallest measured error increase per parameter saved,
    until the budget is met. The step that meets it only goes as far as needed (the largest
    multiple of `align` on its segment that fits the budget), and the parameters still left
    under the budget are given back `align` ranks at a time to the decomposed layers where the
    measured error (interpolated linearly in parameters between the trial ranks and the dense
    layer) drops most per parameter, without passing the `min_gain` cost gate; where more than
    `LANDING_TOLERANCE` is still unspent, one layer's step up is swapped in for steps down
    elsewhere (`_land`). None for a layer left dense. Deterministic (ties go to the earlier
    layer)."""
    if align < 1:
        raise ValueError(f"align must be at least 1, got {align}")
    ladders = [sorted(curve, reverse=True) for curve in curves]
    state: list[int] = [-1] * len(shapes)  # index into the ladder; -1 = dense
    total = float(sum(k * n for k, n in shapes))
    budget = keep * total
    cost = total

    def params(i: int, at: int) -> int:
        k, n = shapes[i]
        return k * n if at < 0 else ladders[i][at] * (k + n)

    def step(i: int) -> tuple[float, int] | None:
        ladder, at = ladders[i], state[i]
        if at + 1 >= len(ladder):
            return None
        before_err = 0.0 if at < 0 else curves[i][ladder[at]]
        saved = params(i, at) - params(i, at + 1)
        return (max(curves[i][ladder[at + 1]] - before_err, 0.0) / max(saved, 1), i)

    heap = [entry for entry in (step(i) for i in range(len(shapes))) if entry is not None]
    heapq.heapify(heap)
    last = None
    while cost > budget and heap:
        _, i = heapq.heappop(heap)
        cost -= params(i, state[i]) - params(i, state[i] + 1)
        state[i] += 1
        last = i
        nxt = step(i)
        if nxt is not None:
            heapq.heappush(heap, nxt)
    ranks: list[int | None] = [None if at < 0 else ladders[i][at] for i, at in enumerate(state)]
    if last is None or cost > budget:
        return ranks  # nothing taken, or every ladder exhausted short of the budget

    # the step that met the budget: only as far as needed along its segment
    i = last
    k, n = shapes[i]
    reached = ladders[i][state[i]]
    top = _max_rank(k, n, align, min_gain) if state[i] == 0 else ladders[i][state[i] - 1] - 1
    others = cost - reached * (k + n)
    fits = int((budget - others) // (k + n)) // align * align
    ranks[i] = max(reached, min(fits, top // align * align))
    cost = others + ranks[i] * (k + n)

    return _land(shapes, curves, ranks, budget, align, min_gain)


def _land(shapes: Sequence[tuple[int, int]], curves: Sequence[Mapping[int, float]], ranks: list[int | None],
          budget: float, align: int, min_gain: float) -> list[int | None]:
    """Spend what `ranks` leave under `budget` in steps of `align` ranks, by the measured error
    interpolated linearly in parameters (`_interpolated`).

    Give-back: raise the decomposed layer whose error drops most per parameter added, while it
    fits. Only when more than `LANDING_TOLERANCE` of the parameters is still unspent (every step
    left is too wide: a 120×6625 CTC head moves ~54k parameters per 8 ranks, and dense layers
    cannot move at all), try a swap: raise one layer by a step that does not fit and pay for it
    with the cheapest `align` steps down elsewhere (a dense layer's step down goes to its
    cost-gate rank; none goes below its lowest trial rank), then give back again; of the swaps
    that leave less unspent, the one with the least modelled error is taken. Swaps trade
    measured-cheap rank for interpolated estimates, so they stop as soon as the tolerance is met.
    Deterministic (ties go to the earlier layer)."""
    errors = [_interpolated(shape, curve) for shape, curve in zip(shapes, curves)]
    caps = [_max_rank(k, n, align, min_gain) for k, n in shapes]
    floors = [min(curve) if curve else 0 for curve in curves]

    def cost_of(state: Sequence[int | None]) -> int:
        return sum(k * n if r is None else r * (k + n) for (k, n), r in zip(shapes, state))

    def error_of(state: Sequence[int | None]) -> float:
        return sum(0.0 if r is None else errors[i](r) for i, r in enumerate(state))

    def give_back(state: list[int | None]) -> list[int | None]:
        cost = cost_of(state)
        while True:
            best = None
            for j, rank in enumerate(state):
                if rank is None or rank + align > caps[j]:
                    continue
                k, n = shapes[j]
                added = align * (k + n)
                if cost + added > budget:
                    continue
                gain = (errors[j](rank) - errors[j](rank + align)) / added
                if best is None or gain > best[0]:
                    best = (gain, j, added)
            if best is None:
                return state
            _, j, added = best
            state[j] = int(state[j]) + align
            cost += added

    def step_down(state: list[int | None], frozen: int) -> bool:
        """The cheapest `align` step down of a layer other than `frozen`; False where none is left."""
        best = None
        for j, rank in enumerate(state):
            k, n = shapes[j]
            if j == frozen or not curves[j]:
                continue
            if rank is None:
                new = caps[j] if caps[j] >= floors[j] and caps[j] > 0 else None
                before_cost, before_err = k * n, 0.0
            else:
                new = rank - align if rank - align >= max(floors[j], align) else None
                before_cost, before_err = rank * (k + n), errors[j](rank)
            if new is None:
                continue
            saved = before_cost - new * (k + n)
            if saved <= 0:
                continue
            slope = (errors[j](new) - before_err) / saved
            if best is None or slope < best[0]:
                best = (slope, j, new)
        if best is None:
            return False
        state[best[1]] = best[2]
        return True

    state = give_back(list(ranks))
    tolerance = LANDING_TOLERANCE * sum(k * n for k, n in shapes)
    for _ in range(4 * len(shapes) + 4):
        left = budget - cost_of(state)
        if left <= tolerance:
            break
        best = None
        for j, rank in enumerate(state):
            if rank is None or rank + align > caps[j]:
                continue
            trial = list(state)
            trial[j] = rank + align
            while cost_of(trial) > budget and step_down(trial, j):
                pass
            if cost_of(trial) > budget:
                continue
            trial = give_back(trial)
            key = (error_of(trial), budget - cost_of(trial))
            if key[1] < left and (best is None or key < best[0]):
                best = (key, trial)
        if best is None:
            break
        state = best[1]
    return state

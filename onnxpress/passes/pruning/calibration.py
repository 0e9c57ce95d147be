"""Streaming calibration for pruning: intermediate activations reduced on the fly.

Pruning's data-aware parts need statistics of intermediate values (a channel's mean |activation|,
a layer's input Gram matrix), never the activations themselves. `iter_values` clones the model
(weights shared), makes the wanted values its only graph outputs, runs the context's runner over
the calibration feeds in chunks sized to a memory budget, and yields the values feed by feed, so a
caller reduces them into running sums and drops them. `ChannelStats` and `GramAccumulator` are
those running sums; `mean_abs_activation` is the statistic the `activation` importance scorer
multiplies the weight norm by.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import onnx_ir as ir

from onnxpress.ir import ops
from onnxpress.passes.pruning.dependency import ChannelDependencies, Slot

__all__ = [
    "ChannelStats",
    "GramAccumulator",
    "iter_values",
    "mean_abs_activation",
    "with_outputs",
]

logger = logging.getLogger(__name__)

#: How many bytes of captured values one chunk of feeds may hold at once.
CHUNK_BYTES = 256 << 20
#: Most feeds per runner call (a runner call opens a session: fewer, bigger calls are cheaper).
MAX_CHUNK = 64


# ----------------------------------------------------------------------------------------------
# Running captured values
# ----------------------------------------------------------------------------------------------
def with_outputs(model: ir.Model, names: Sequence[str]) -> ir.Model:
    """A clone of `model` (weights shared) whose graph outputs are exactly the named values.

    Only what the named values need is computed. Names of graph inputs are allowed and skipped
    (the caller reads them from the feeds); unknown names raise KeyError.
    """
    clone = model.clone()
    graph = clone.graph
    produced = {v.name: v for node in graph for v in node.outputs if v.name}
    inputs = {v.name for v in graph.inputs}
    wanted = []
    for name in dict.fromkeys(names):
        if name in inputs:
            continue
        if name not in produced:
            raise KeyError(f"no node output named '{name}'")
        wanted.append(produced[name])
    graph.outputs.clear()
    graph.outputs.extend(wanted)
    return clone


def _nbytes(arrays: Mapping[str, Any]) -> int:
    return sum(int(getattr(a, "nbytes", 0)) for a in arrays.values())


def iter_values(
    runner: Any,
    jobs: Sequence[tuple[ir.Model, Sequence[str]]],
    feeds: Sequence[Mapping[str, Any]],
    *,
    chunk_bytes: int = CHUNK_BYTES,
) -> Iterator[list[dict[str, np.ndarray]]]:
    """For every feed, one dict of the named values per job `(model, names)`, in job order.

    All jobs run on the same chunk of feeds, so the values of feed i from different models line
    up (a teacher and a student, say). The first chunk is one feed; later chunks hold as many
    feeds as fit in `chunk_bytes` of captured values.
    """
    prepared = []
    for model, names in jobs:
        names = list(dict.fromkeys(names))
        inputs = {v.name for v in model.graph.inputs}
        run_names = [n for n in names if n not in inputs]
        prepared.append((with_outputs(model, run_names) if run_names else None, names, set(run_names)))
    start, chunk = 0, 1
    while start < len(feeds):
        batch = list(feeds[start:start + chunk])
        results = [runner.run(clone, batch) if clone is not None else [{} for _ in batch]
                   for clone, _names, _ran in prepared]
        per_feed = 0
        for i, feed in enumerate(batch):
            row = []
            for (_clone, names, ran), result in zip(prepared, results):
                row.append({n: np.asarray(result[i][n] if n in ran else feed[n]) for n in names})
            per_feed = max(per_feed, sum(_nbytes(values) for values in row))
            yield row
            del row  # hold no sample's values while the next one (or the next run) is produced
        del results
        start += len(batch)
        chunk = int(min(MAX_CHUNK, max(1, chunk_bytes // max(per_feed, 1))))


# ----------------------------------------------------------------------------------------------
# Running sums
# ----------------------------------------------------------------------------------------------
class ChannelStats:
    """Running mean of |x| per position along one axis (the channel axis)."""

    def __init__(self, channels: int) -> None:
        self.sum_abs = np.zeros(channels, dtype=np.float64)
        self.count = 0

    def update(self, array: np.ndarray, axis: int) -> bool:
        """Add one captured array; False (nothing added) if its channel count does not match."""
        if array.ndim <= axis or array.shape[axis] != len(self.sum_abs):
            return False
        moved = np.moveaxis(np.abs(array), axis, 0).reshape(len(self.sum_abs), -1)
        self.sum_abs += moved.sum(axis=1, dtype=np.float64)
        self.count += moved.shape[1]
        return True

    def mean_abs(self) -> np.ndarray:
        return self.sum_abs / max(self.count, 1)


class GramAccumulator:
    """Sufficient statistics of the least-squares fit `Y ≈ X W + b` over streamed rows.

    Holds `[X 1]ᵀ[X 1]`, `[X 1]ᵀY` and `ΣY²` in float64 (memory: (k+1)² + (k+1)·n numbers,
    independent of the number of rows), so fits and their errors need no second pass.
    """

    def __init__(self, n_in: int, n_out: int) -> None:
        self.n_in, self.n_out = n_in, n_out
        self.gram = np.zeros((n_in + 1, n_in + 1), dtype=np.float64)
        self.cross = np.zeros((n_in + 1, n_out), dtype=np.float64)
        self.target_sq = 0.0
        self.rows = 0

    def update(self, x: np.ndarray, y: np.ndarray) -> None:
        """Add rows `x` [r, n_in] with targets `y` [r, n_out]."""
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        k = self.n_in
        self.gram[:k, :k] += x.T @ x
        sums = x.sum(axis=0)
        self.gram[:k, k] += sums
        self.gram[k, :k] += sums
        self.gram[k, k] += x.shape[0]
        self.cross[:k] += x.T @ y
        self.cross[k] += y.sum(axis=0)
        self.target_sq += float(np.square(y).sum())
        self.rows += x.shape[0]

    def merged(self, other: "GramAccumulator") -> "GramAccumulator":
        """The statistics of both accumulators' rows together."""
        out = GramAccumulator(self.n_in, self.n_out)
        out.gram, out.cross = self.gram + other.gram, self.cross + other.cross
        out.target_sq, out.rows = self.target_sq + other.target_sq, self.rows + other.rows
        return out

    def _augmented(self, weight: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
        b = np.zeros(self.n_out) if bias is None else np.asarray(bias, dtype=np.float64).reshape(self.n_out)
        return np.vstack([np.asarray(weight, dtype=np.float64), b[None, :]])

    def squared_error(self, weight: np.ndarray, bias: np.ndarray | None = None) -> float:
        """Σ‖x W + b − y‖² over the rows seen, from the statistics alone."""
        w = self._augmented(weight, bias)
        value = float(np.einsum("ij,ij->", w, self.gram @ w)) - 2.0 * float(np.einsum("ij,ij->", w, self.cross))
        return max(value + self.target_sq, 0.0)

    def relative_error(self, weight: np.ndarray, bias: np.ndarray | None = None) -> float:
        """‖x W + b − y‖ / ‖y‖ over the rows seen."""
        return float(np.sqrt(self.squared_error(weight, bias) / max(self.target_sq, 1e-300)))

    def solve(self, ridge: float, *, bias: bool = True, prior: np.ndarray | None = None,
              tie: int = 1) -> tuple[np.ndarray, np.ndarray | None]:
        """Ridge least squares: `(G + λI) W = XᵀY + λ·prior`, λ = ridge · mean(diag G).

        The damping pulls the weights towards `prior` (zero when None), never the bias; with
        `bias=False` the fit has no intercept. `tie` > 1: each run of `tie` consecutive columns
        shares one bias (a ConvTranspose's output block), solved exactly: with A = G + λI,
        m = Xᵀ1 and N rows, W = A⁻¹(XᵀY + λ·prior − m bᵀ) and the shared b of a run c is
        Σ_{j∈c}(1ᵀy_j − mᵀA⁻¹(Xᵀy_j + λ·prior_j)) / (|c|·(N − mᵀA⁻¹m)).
        Returns (W [n_in, n_out], b [n_out] or None; tied entries repeated).
        """
        k = self.n_in
        size = k + 1 if bias and tie == 1 else k
        gram = self.gram[:size, :size].copy()
        rhs = self.cross[:size].copy()
        damping = ridge * float(np.mean(np.diag(self.gram)[:k])) if k else 0.0
        damping = damping if damping > 0 else 1e-12
        gram[np.arange(k), np.arange(k)] += damping
        if prior is not None:
            rhs[:k] += damping * np.asarray(prior, dtype=np.float64)
        if bias and tie > 1:
            rhs = np.hstack([rhs, self.gram[:k, k:k + 1]])
        try:
            solution = np.linalg.solve(gram, rhs)
        except np.linalg.LinAlgError:
            solution = np.linalg.lstsq(gram, rhs, rcond=None)[0]
        if not bias or tie == 1:
            return solution[:k], (solution[k] if bias else None)
        z, z_m = solution[:, :-1], solution[:, -1]
        m, rows = self.gram[:k, k], self.gram[k, k]
        residual = (self.cross[k] - m @ z).reshape(-1, tie).sum(axis=1)
        shared = residual / (tie * max(rows - float(m @ z_m), 1e-12))
        b = np.repeat(shared, tie)
        return z - np.outer(z_m, b), b


# ----------------------------------------------------------------------------------------------
# Mean |activation| per element class
# ----------------------------------------------------------------------------------------------
_FOLLOW = {ops.ELEMENTWISE_UNARY, ops.ELEMENTWISE_BINARY, ops.NORMALIZATION}


def _after_activation(deps: ChannelDependencies, value: ir.Value, slot: Slot) -> tuple[ir.Value, Slot]:
    """Walk from a producer's output through its bias add / norm / activation (single uses only,
    other operands constant, same channels) and stop right after the activation."""
    while not value.is_graph_output():
        uses = list(value.uses())
        if len(uses) != 1:
            break
        node = uses[0].node
        categories = ops.metatypes(node)
        if not categories & _FOLLOW or not node.outputs:
            break
        if any(v is not None and v is not value and v.const_value is None for v in node.inputs):
            break
        nxt = node.outputs[0]
        nxt_slot = deps.slot(nxt)
        if nxt_slot is None or not np.array_equal(nxt_slot.elements, slot.elements):
            break
        value, slot = nxt, nxt_slot
        if ops.ACTIVATION in categories:
            break
    return value, slot


def _measured_values(deps: ChannelDependencies, classes: set[int]) -> dict[str, tuple[ir.Value, Slot]]:
    """One tracked value per producer block that owns a class in `classes`."""
    picked: dict[str, tuple[ir.Value, Slot]] = {}
    for block in deps.blocks:
        if not block.producer or block.node is None or not block.node.outputs:
            continue
        elements = np.arange(block.start, block.start + block.size)
        if not any(deps.find(int(e)) in classes for e in elements):
            continue
        out = block.node.outputs[0]
        slot = deps.slot(out)
        if slot is None or not np.array_equal(slot.elements, elements):
            continue
        value, slot = _after_activation(deps, out, slot)
        if not value.name:
            logger.debug("no name to capture the output of %s; skipped", block.label)
            continue
        picked[value.name] = (value, slot)
    return picked


def mean_abs_activation(model: ir.Model, deps: ChannelDependencies, ctx: Any, limit: int | None) -> dict[int, float]:
    """{prunable class: mean |activation| of its channels} over up to `limit` calibration feeds.

    Measured on each producer's output after its activation (Conv → BN → Relu: the Relu output),
    averaged over the producers a class couples. Classes nobody measured get their group's mean.
    Empty when the context has no runner or no data.
    """
    feeds = ctx.feeds(limit)
    if ctx.runner is None or not feeds:
        return {}
    groups = [g for g in deps.groups() if g.prunable]
    classes = {c for g in groups for c in g.prunable}
    picked = _measured_values(deps, classes)
    if not picked:
        return {}
    stats = {name: ChannelStats(len(slot)) for name, (_v, slot) in picked.items()}
    for (values,) in iter_values(ctx.runner, [(model, list(picked))], feeds):
        for name, array in values.items():
            if not stats[name].update(array, picked[name][1].axis):
                logger.debug("'%s' has shape %s, not %d channels on axis %d; not measured", name,
                             array.shape, len(stats[name].sum_abs), picked[name][1].axis)
    per_class: dict[int, list[float]] = defaultdict(list)
    for name, (_value, slot) in picked.items():
        if not stats[name].count:
            continue
        means = stats[name].mean_abs()
        for position, element in enumerate(slot.elements.tolist()):
            c = deps.find(element)
            if c in classes:
                per_class[c].append(float(means[position]))
    result = {c: float(np.mean(v)) for c, v in per_class.items()}
    for g in groups:
        measured = [result[c] for c in g.prunable if c in result]
        fill = float(np.mean(measured)) if measured else 1.0
        for c in g.prunable:
            result.setdefault(c, fill)
    logger.debug("mean |activation| measured on %d values over %d feeds", len(picked), len(feeds))
    return result

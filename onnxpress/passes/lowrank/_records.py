"""What the low-rank passes decide and report: the cost gate and the per-layer records.

The gate is the decision rule of ../shared/REFERENCES.md ("A decision rule a pass can implement"):
a decomposition is kept only where it removes at least `min_gain` of the layer's parameters AND of
its multiply-accumulates (tensor-train, which trades MACs for parameters, is gated on parameters
only and reports the MAC change as it is). Each decomposed layer leaves a `LayerRecord`; `summary`
turns them into a pass's `stats`: scalar totals a report can sum, plus `layers`, one dict per layer;
`decompose_each` and `result` are the loop and the ending every pass shares.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import onnx_ir as ir

from onnxpress.passes.base import PassResult

__all__ = ["LayerRecord", "check_fraction", "decompose_each", "gate", "relative_error", "result", "summary"]

logger = logging.getLogger(__name__)


def check_fraction(name: str, value: float | None, *, closed_high: bool = False) -> None:
    """Options validation: `value` must be None or in (0, 1) (or (0, 1] with `closed_high`)."""
    if value is None:
        return
    high_ok = value <= 1.0 if closed_high else value < 1.0
    if not (value > 0.0 and high_ok):
        raise ValueError(f"{name} must be in (0, 1{']' if closed_high else ')'}")


def gate(params: tuple[int, int], macs: tuple[int, int], min_gain: float, *, params_only: bool = False) -> str | None:
    """None when (before, after) params and MACs both drop by `min_gain`; else the reason."""
    (p0, p1), (m0, m1) = params, macs
    if p1 > (1.0 - min_gain) * p0:
        return "params do not drop enough"
    if not params_only and m1 > (1.0 - min_gain) * m0:
        return "MACs do not drop enough"
    return None


def relative_error(w: np.ndarray, w_hat: np.ndarray) -> float:
    """‖W − Ŵ‖ / ‖W‖ (Frobenius)."""
    norm = float(np.linalg.norm(w))
    return float(np.linalg.norm(np.asarray(w, dtype=np.float64) - w_hat)) / max(norm, 1e-300)


@dataclasses.dataclass
class LayerRecord:
    """One decomposed layer: its ranks, cost before -> after, and how far its weight moved.

    MACs are those of the layer's input as its recorded shape says (all tokens, the whole feature
    map); unknown dims count as 1. Params count the new initializers (factors, and the shape
    constants of the TT chain). `output_error` is ‖x(W − Ŵ)‖ / ‖xW‖ on the calibration inputs,
    when the pass had them.
    """

    node: str
    op: str
    method: str
    ranks: tuple[int, ...]
    params: tuple[int, int]
    macs: tuple[int, int]
    weight_error: float
    output_error: float | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "node": self.node,
            "op": self.op,
            "method": self.method,
            "ranks": list(self.ranks),
            "params_before": self.params[0],
            "params_after": self.params[1],
            "macs_before": self.macs[0],
            "macs_after": self.macs[1],
            "weight_error": round(self.weight_error, 6),
        }
        if self.output_error is not None:
            out["output_error"] = round(self.output_error, 6)
        return out


def summary(records: Sequence[LayerRecord], skipped: Counter[str]) -> dict[str, Any]:
    """A pass's stats: totals over the decomposed layers, the skip reasons, and every record."""
    stats: dict[str, Any] = {
        "decomposed": len(records),
        "params_before": sum(r.params[0] for r in records),
        "params_after": sum(r.params[1] for r in records),
        "macs_before": sum(r.macs[0] for r in records),
        "macs_after": sum(r.macs[1] for r in records),
        "skipped": sum(skipped.values()),
    }
    if records:
        stats["max_weight_error"] = round(max(r.weight_error for r in records), 6)
        measured = [r.output_error for r in records if r.output_error is not None]
        if measured:
            stats["max_output_error"] = round(max(measured), 6)
    stats["skip_reasons"] = dict(skipped)
    stats["layers"] = [r.as_dict() for r in records]
    return stats


def decompose_each(layers: Iterable[Any], decompose: Callable[[Any], "LayerRecord | str"], pass_name: str,
                   skipped: Counter[str]) -> list[LayerRecord]:
    """`decompose(layer)` for every layer: the records of those done, the reasons of the rest."""
    records = []
    for layer in layers:
        outcome = decompose(layer)
        if isinstance(outcome, str):
            logger.debug("%s: '%s' skipped: %s", pass_name, layer.node.name, outcome)
            skipped[outcome] += 1
        else:
            records.append(outcome)
    return records


def result(model: ir.Model, pass_name: str, records: Sequence[LayerRecord], skipped: Counter[str]) -> PassResult:
    """The pass's result, with one info line saying what changed (MACs included: TT raises them)."""
    stats = summary(records, skipped)
    if records:
        logger.info("%s: decomposed %d layer(s), params %d -> %d, MACs %d -> %d (x%.2f)", pass_name, len(records),
                    stats["params_before"], stats["params_after"], stats["macs_before"], stats["macs_after"],
                    stats["macs_after"] / max(stats["macs_before"], 1))
    return PassResult(model, bool(records), stats)

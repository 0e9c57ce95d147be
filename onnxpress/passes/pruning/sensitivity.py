"""Per-group pruning ratios from measured sensitivity (`prune-channels{scope=sensitivity}`).

Uniform ratios treat every group alike, but real networks are not alike: in a compact OCR net a
few groups carry the signal and pruning them at the uniform ratio destroys the output, while other
groups barely matter. Here each prunable group is pruned *alone* at the uniform ratio on a clone
of the model, the relative output error on the calibration data is measured on ONNX Runtime, and
the removal budget of the uniform ratio is redistributed: robust groups give more channels,
sensitive ones fewer (ratio_g ∝ sensitivity_g^-1/2, rescaled to the same total, capped by
max-layer-ratio). The analysis is deterministic, so element classes on a clone carry the same ids.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import onnx_ir as ir

from onnxpress.passes.pruning.dependency import ChannelDependencies, Group

__all__ = ["group_sensitivities", "allocate_ratios"]

logger = logging.getLogger(__name__)


def _relative_error(reference: Sequence[Mapping[str, np.ndarray]], got: Sequence[Mapping[str, np.ndarray]]) -> float:
    num = den = 0.0
    for ref, out in zip(reference, got):
        for name, r in ref.items():
            r64 = np.asarray(r, dtype=np.float64)
            o64 = np.asarray(out[name], dtype=np.float64)
            if r64.shape != o64.shape or not np.issubdtype(r64.dtype, np.floating):
                continue
            num += float(np.sum((o64 - r64) ** 2))
            den += float(np.sum(r64**2))
    return float(np.sqrt(num / den)) if den > 0 else 0.0


def group_sensitivities(
    model: ir.Model,
    groups: Sequence[Group],
    choose: Callable[[Group], list[int]],
    analyze: Callable[[ir.Model], ChannelDependencies],
    ctx: Any,
    *,
    limit: int = 8,
) -> dict[int, float]:
    """Relative output error when only group `g` loses the classes `choose(g)`, per group index."""
    from onnxpress.passes.pruning.plan import apply_pruning

    feeds = ctx.feeds(limit)
    reference = ctx.runner.run(model, feeds)
    out: dict[int, float] = {}
    for g in groups:
        classes = choose(g)
        if not classes:
            out[g.index] = 0.0
            continue
        clone = model.clone()
        apply_pruning(clone, analyze(clone), set(classes))
        out[g.index] = _relative_error(reference, ctx.runner.run(clone, feeds))
        logger.debug("sensitivity of group %d (%d channels): %.4g", g.index, len(classes), out[g.index])
    return out


def allocate_ratios(
    groups: Sequence[Group], sensitivity: Mapping[int, float], ratio: float, max_layer_ratio: float
) -> dict[int, float]:
    """Per-group ratios with the uniform ratio's total removal, shifted away from sensitive groups."""
    sizes = {g.index: len(g.prunable) for g in groups}
    budget = ratio * sum(sizes.values())
    values = np.array([sensitivity.get(i, 0.0) for i in sizes], dtype=np.float64)
    floor = max(float(np.median(values)) * 1e-3, 1e-12)
    weights = {i: (max(sensitivity.get(i, 0.0), floor)) ** -0.5 for i in sizes}

    def removed(scale: float) -> float:
        return sum(min(scale * weights[i], max_layer_ratio) * sizes[i] for i in sizes)

    lo, hi = 0.0, 1.0
    while removed(hi) < budget and hi < 1e12:
        hi *= 2.0
    for _ in range(60):
        mid = (lo + hi) / 2.0
        lo, hi = (mid, hi) if removed(mid) < budget else (lo, mid)
    return {i: min(hi * weights[i], max_layer_ratio) for i in sizes}

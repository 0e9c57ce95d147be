"""Importance scorers: how much each element class (a set of coupled channels) matters.

Scorers are interchangeable functions `(deps, classes, options) -> {class: score}`; a lower score
is pruned first. Weight-only scorers aggregate, over a group's members, the norm of the slices a
class owns (Torch-Pruning's group importance: mean / sum / max over members). `bn-scale` uses
|gamma| of the BatchNormalization members only (Liu et al., network slimming). The
activation-aware scorer multiplies each class's weight norm by the mean |activation| of its
channels on the calibration data (Wanda-style), measured on the producer's output. `obs` ranks
classes by the output error their removal leaves after a least-squares refit of their consumers
(Optimal Brain Surgeon, structured; computed in `obs.py`): the natural partner of `reconstruct`.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

from onnxpress.passes.pruning.dependency import ChannelDependencies, Member

__all__ = ["SCORERS", "score_classes", "register_scorer", "AGGREGATES"]

logger = logging.getLogger(__name__)

Scorer = Callable[[ChannelDependencies, Iterable[int], str, Any], dict[int, float]]
SCORERS: dict[str, Scorer] = {}
AGGREGATES = ("mean", "sum", "max")


def register_scorer(name: str) -> Callable[[Scorer], Scorer]:
    def register(fn: Scorer) -> Scorer:
        SCORERS[name] = fn
        return fn

    return register


def _position_norms(member: Member, p: int) -> np.ndarray:
    """|slice|_p for every position along the member's axis (squared for p=2, summed for p=1)."""
    array = np.asarray(member.value.const_value.numpy(), dtype=np.float64)
    moved = np.moveaxis(array, member.axis, 0).reshape(array.shape[member.axis], -1)
    return np.abs(moved).sum(axis=1) if p == 1 else np.square(moved).sum(axis=1)


def _aggregate(per_member: Mapping[int, list[float]], how: str) -> dict[int, float]:
    fn = {"mean": np.mean, "sum": np.sum, "max": np.max}[how]
    return {c: float(fn(v)) for c, v in per_member.items()}


def _member_scores(deps: ChannelDependencies, classes: set[int], members: Iterable[Member], p: int,
                   how: str) -> dict[int, float]:
    per_class: dict[int, list[float]] = defaultdict(list)
    for m in members:
        norms = _position_norms(m, p)
        acc: dict[int, float] = defaultdict(float)
        for pos, e in enumerate(m.elements.tolist()):
            c = deps.find(e)
            if c in classes:
                acc[c] += float(norms[pos])
        for c, v in acc.items():
            per_class[c].append(np.sqrt(v) if p == 2 else v)
    out = _aggregate(per_class, how)
    for c in classes:
        out.setdefault(c, 0.0)
    return out


@register_scorer("l1")
def l1(deps: ChannelDependencies, classes: Iterable[int], how: str = "mean", data: Any = None) -> dict[int, float]:
    """Sum of |w| of each class's slices, aggregated over the group's members."""
    return _member_scores(deps, set(classes), deps.members, 1, how)


@register_scorer("l2")
def l2(deps: ChannelDependencies, classes: Iterable[int], how: str = "mean", data: Any = None) -> dict[int, float]:
    """L2 norm of each class's slices, aggregated over the group's members."""
    return _member_scores(deps, set(classes), deps.members, 2, how)


@register_scorer("bn-scale")
def bn_scale(deps: ChannelDependencies, classes: Iterable[int], how: str = "mean", data: Any = None) -> dict[int, float]:
    """|gamma| of the BatchNormalization scales; classes without one fall back to L2."""
    classes = set(classes)
    gammas = [m for m in deps.members
              if m.role == "norm-param" and m.node.op_type == "BatchNormalization" and m.node.inputs[1] is m.value]
    scores = _member_scores(deps, classes, gammas, 1, how)
    covered = {deps.find(int(e)) for m in gammas for e in m.elements}
    fallback = l2(deps, classes - covered, how)
    return {c: (scores[c] if c in covered else fallback[c]) for c in classes}


@register_scorer("activation")
def activation(deps: ChannelDependencies, classes: Iterable[int], how: str = "mean",
               data: Any = None) -> dict[int, float]:
    """L2 weight norm x mean |activation| of the channels (needs `data`: {class: mean |act|})."""
    classes = set(classes)
    weights = l2(deps, classes, how)
    if not data:
        logger.warning("activation importance needs calibration data; using L2 of the weights")
        return weights
    return {c: weights[c] * float(data.get(c, 1.0)) for c in classes}


@register_scorer("obs")
def obs(deps: ChannelDependencies, classes: Iterable[int], how: str = "mean", data: Any = None) -> dict[int, float]:
    """The output error each class's removal leaves after a least-squares refit of its consumers
    (`data`: {class: score} from `obs.obs_scores`, measured on the calibration data)."""
    classes = set(classes)
    if not data:
        logger.warning("obs importance needs calibration data; using L2 of the weights")
        return l2(deps, classes, how)
    return {c: float(data[c]) if c in data else 0.0 for c in classes}


def score_classes(deps: ChannelDependencies, classes: Iterable[int], method: str, how: str = "mean",
                  data: Any = None) -> dict[int, float]:
    if method not in SCORERS:
        raise ValueError(f"unknown importance '{method}'; choose one of {', '.join(sorted(SCORERS))}")
    if how not in AGGREGATES:
        raise ValueError(f"unknown aggregation '{how}'; choose one of {', '.join(AGGREGATES)}")
    return SCORERS[method](deps, classes, how, data)

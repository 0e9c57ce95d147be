"""Choosing which channel classes to remove, removing them, and the replayable pruning plan.

`select_classes` turns importance scores and ratios into a set of element classes to remove
(uniform per group, or one global threshold with a per-group cap; `round-to` multiples; at least
one channel kept wherever channels flow). `apply_pruning` slices every member tensor, rewrites the
recorded attributes (Conv `group`, Reshape targets, Split sizes) and updates value shapes. The
`PruningPlan` it returns names, per initializer and axis, the positions removed: `replay_plan`
applies the same plan to the same model again (the analysis is rerun to regenerate the rewrites).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
from collections import defaultdict
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import onnx_ir as ir

from onnxpress.passes.pruning.dependency import ChannelDependencies, Group

__all__ = ["PruningPlan", "select_classes", "apply_pruning", "replay_plan", "RatioRule"]

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class RatioRule:
    """A per-layer ratio override: groups whose producer names match `pattern` use `ratio`."""

    pattern: str
    ratio: float

    def matches(self, group: Group) -> bool:
        """`name` and `re:REGEX` match producer node names, `op:Conv` their op type."""
        if self.pattern.startswith("op:"):
            return any(n.op_type == self.pattern[3:] for n in group.producers)
        names = [n.name or "" for n in group.producers]
        regex = re.compile(self.pattern[3:]) if self.pattern.startswith("re:") else None
        return any((regex.search(n) if regex else n == self.pattern) for n in names)


def _count(ratio: float, n: int) -> int:
    """floor(ratio * n), robust to float error (0.57 * 100 is 56.99999999999999)."""
    return int(math.floor(ratio * n + 1e-9))


def _removal_count(ratio: float, n: int) -> int:
    """How many of `n` channels a ratio removes: `n - floor((1 - ratio) * n)`, so the kept count is
    the one Torch-Pruning keeps (int(C * (1 - ratio))) and pruned shapes agree with it."""
    return n - int(math.floor(round((1.0 - ratio) * n, 9)))


def _round_kept(total: int, kept: int, round_to: int) -> int:
    if round_to <= 1:
        return kept
    return min(total, math.ceil(kept / round_to) * round_to)


def select_classes(
    deps: ChannelDependencies,
    groups: list[Group],
    scores: Mapping[int, float],
    *,
    ratio: float,
    scope: str = "uniform",
    round_to: int = 1,
    max_layer_ratio: float = 0.8,
    overrides: tuple[RatioRule, ...] = (),
    group_ratios: Mapping[int, float] | None = None,
) -> set[int]:
    """The classes to remove; `ratio` is the fraction of prunable channels (classes) removed.

    Per group, the ratio is the first matching `overrides` rule, else `group_ratios[g.index]`
    (from measured sensitivity), else `ratio`. `scope=sensitivity` selects like `uniform`.
    """
    pruned: set[int] = set()
    live = [g for g in groups if g.prunable]

    def ratio_for(g: Group) -> float:
        for rule in overrides:
            if rule.matches(g):
                return rule.ratio
        if group_ratios is not None and g.index in group_ratios:
            return group_ratios[g.index]
        return ratio

    def limit(g: Group, n: int) -> int:
        """Cap by max-layer-ratio, then round the kept count up to a multiple of round-to."""
        n = min(n, len(g.prunable), _count(max_layer_ratio, len(g.classes)))
        total = len(g.classes)
        return max(0, min(n, total - _round_kept(total, total - n, round_to)))

    if scope in ("uniform", "sensitivity"):
        for g in live:
            order = sorted(g.prunable, key=lambda c: (scores[c], c))
            pruned.update(order[: limit(g, _removal_count(ratio_for(g), len(g.prunable)))])
    elif scope == "global":
        normalized: list[tuple[float, int, int]] = []
        budget = 0
        for gi, g in enumerate(live):
            mean = float(np.mean([scores[c] for c in g.prunable])) or 1.0
            normalized.extend((scores[c] / mean, c, gi) for c in g.prunable)
            budget += _removal_count(ratio_for(g), len(g.prunable))
        taken: dict[int, list[int]] = defaultdict(list)
        for _score, c, gi in sorted(normalized):
            if budget <= 0:
                break
            g = live[gi]
            if len(taken[gi]) < min(len(g.prunable), _count(max_layer_ratio, len(g.classes))):
                taken[gi].append(c)
                budget -= 1
        for gi, chosen in taken.items():
            pruned.update(chosen[: limit(live[gi], len(chosen))])
    else:
        raise ValueError(f"unknown scope '{scope}'; choose uniform, global or sensitivity")
    _keep_one_everywhere(deps, pruned, scores)
    return pruned


def _keep_one_everywhere(deps: ChannelDependencies, pruned: set[int], scores: Mapping[int, float]) -> None:
    """No tensor may lose all its channels: restore the best class where that would happen."""
    sets = [slot.elements for _v, slot in deps.slot_values()] + list(deps.require_nonempty)
    changed = True
    while changed:
        changed = False
        for elements in sets:
            classes = {deps.find(int(e)) for e in elements}
            if classes and classes <= pruned:
                best = max(classes, key=lambda c: (scores.get(c, 0.0), c))
                pruned.discard(best)
                changed = True


@dataclasses.dataclass
class PruningPlan:
    """What was removed: per initializer and axis, the positions (indices before pruning)."""

    tensors: dict[str, dict[int, list[int]]]
    layers: list[dict[str, Any]]  # per producer: name, op, channels before/after
    params_before: int
    params_after: int
    rewrites: list[str]
    lossy_norms: bool = False  # the analysis option the plan was made under (replay needs it)

    @property
    def params_removed(self) -> int:
        return self.params_before - self.params_after

    def to_dict(self) -> dict[str, Any]:
        return {
            "tensors": {name: {str(a): list(map(int, idx)) for a, idx in axes.items()} for name, axes in self.tensors.items()},
            "layers": self.layers,
            "params_before": self.params_before,
            "params_after": self.params_after,
            "rewrites": self.rewrites,
            "lossy_norms": self.lossy_norms,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "PruningPlan":
        tensors = {name: {int(a): list(idx) for a, idx in axes.items()} for name, axes in data["tensors"].items()}
        return cls(tensors, list(data.get("layers", [])), int(data.get("params_before", 0)),
                   int(data.get("params_after", 0)), list(data.get("rewrites", [])),
                   bool(data.get("lossy_norms", False)))


def _keeper(deps: ChannelDependencies, pruned: set[int]) -> Callable[[np.ndarray], np.ndarray]:
    find = deps.find

    def keep(elements: np.ndarray) -> np.ndarray:
        return np.fromiter((find(int(e)) not in pruned for e in elements), dtype=bool, count=len(elements))

    return keep


def _member_masks(deps: ChannelDependencies, pruned: set[int]) -> list[tuple[ir.Value, dict[int, np.ndarray]]]:
    """Per member tensor that loses something: its keep mask per sliced axis."""
    keep = _keeper(deps, pruned)
    by_value: dict[int, list] = defaultdict(list)
    for m in deps.members:
        by_value[id(m.value)].append(m)
    out = []
    for members in by_value.values():
        value = members[0].value
        masks: dict[int, np.ndarray] = {}
        for m in members:
            mask = keep(m.elements)
            if m.axis in masks and not np.array_equal(masks[m.axis], mask):
                raise AssertionError(f"inconsistent pruning of '{value.name}' along axis {m.axis}")
            masks[m.axis] = mask
        if not all(mask.all() for mask in masks.values()):
            out.append((value, masks))
    return out


def _removed(masks: dict[int, np.ndarray]) -> dict[int, list[int]]:
    return {axis: np.flatnonzero(~mask).tolist() for axis, mask in sorted(masks.items()) if not mask.all()}


def apply_pruning(model: ir.Model, deps: ChannelDependencies, pruned: set[int]) -> PruningPlan:
    """Remove the classes in `pruned` from every member, rewrite attributes, update shapes."""
    keep = _keeper(deps, pruned)
    tensors: dict[str, dict[int, list[int]]] = {}
    before = after = 0
    for value, masks in _member_masks(deps, pruned):
        array = value.const_value.numpy()
        new = array
        for axis, mask in sorted(masks.items()):
            new = np.compress(mask, new, axis=axis)
        before += array.size
        after += new.size
        tensors[value.name] = _removed(masks)
        value.const_value = ir.tensor(np.ascontiguousarray(new), name=value.name)
        value.shape = ir.Shape(list(new.shape))
    for value, slot in deps.slot_values():
        if value.shape is None or slot.axis >= len(value.shape):
            continue
        n = int(keep(slot.elements).sum())
        if n != len(slot.elements):
            dims = list(value.shape)
            dims[slot.axis] = n
            value.shape = ir.Shape(dims)
    rewrites = []
    for action in deps.actions:
        action.apply(keep)
        rewrites.append(f"{action.node.name or action.node.op_type}: {action.description}")
    layers = []
    for block in deps.blocks:
        if not block.producer or block.node is None:
            continue
        elements = np.arange(block.start, block.start + block.size)
        kept = int(keep(elements).sum())
        if kept != block.size:
            layers.append({"name": block.node.name, "op": block.node.op_type, "channels_before": block.size,
                           "channels_after": kept})
    total = sum(int(v.const_value.size) for v in model.graph.initializers.values() if v.const_value is not None)
    return PruningPlan(tensors, layers, total + before - after, total, rewrites,
                       bool(getattr(deps, "allow_lossy_norms", False)))


def replay_plan(model: ir.Model, plan: PruningPlan | Mapping[str, Any], *,
                analysis: Callable[[ir.Model], ChannelDependencies] | None = None) -> PruningPlan:
    """Apply a recorded plan to the same (unpruned) model by initializer names.

    Strict: when the plan does not fit the model (a tensor it names is missing or frozen here, or
    the coupled slices would differ from the recorded ones) it raises ValueError and leaves the
    model unchanged."""
    from onnxpress.passes.pruning.dependency import ChannelDependencyAnalysis

    if not isinstance(plan, PruningPlan):
        plan = PruningPlan.from_dict(plan)
    if analysis is not None:
        deps = analysis(model)
    else:
        deps = ChannelDependencyAnalysis(allow_lossy_norms=plan.lossy_norms).compute(model, None)
    pruned: set[int] = set()
    for m in deps.members:
        removed = plan.tensors.get(m.value.name, {}).get(m.axis)
        if removed:
            if max(removed) >= len(m.elements):
                raise ValueError(f"plan does not fit: '{m.value.name}' axis {m.axis} has {len(m.elements)} positions")
            pruned.update(deps.find(int(m.elements[i])) for i in removed)
    frozen = sorted(c for c in pruned if deps.is_frozen(c))
    if frozen:
        reasons = deps.reasons_by_class().get(frozen[0], ["frozen"])
        raise ValueError(f"plan does not fit: it removes {len(frozen)} frozen channel(s) ({reasons[0]})")
    would = {value.name: _removed(masks) for value, masks in _member_masks(deps, pruned)}
    expected = {name: {a: sorted(idx) for a, idx in sorted(axes.items()) if idx} for name, axes in plan.tensors.items()}
    if would != {name: axes for name, axes in expected.items() if axes}:
        missing = sorted(set(would) ^ set(expected) or {n for n in would if would[n] != expected.get(n)})
        raise ValueError(f"plan does not fit: the coupled slices differ for {', '.join(missing[:5])}")
    return apply_pruning(model, deps, pruned)

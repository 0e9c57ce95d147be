"""PruneChannelsPass: remove whole channels so that the result is a smaller dense model.

`prune-channels{ratio=0.3 importance=l2 scope=uniform round-to=1 max-layer-ratio=0.8 ignore=...}`
removes about `ratio` of the prunable channels of every coupled group (or of all groups together,
`scope=global`), lowest importance first. Which slices go together comes from
`ChannelDependencyAnalysis`; what cannot be reasoned about is never touched. With
`reconstruct=true` and calibration data in the PassContext, the layers that lost input channels
are refitted by ridge least squares to reproduce the original model's outputs: by default
sequentially (`sequential=true`: each layer fitted to the inputs the already-refitted pruned model
feeds it; one-shot `sequential=false` fits every layer from one pass of the original model, faster,
but measured far worse on deep CNNs: PP-OCRv4 rec at 0.3 keeps 0.06 of its decoded strings vs
0.42–0.49 sequentially). The ridge (relative to the mean input energy, pulling towards the pruned
weights) is chosen per layer on held-out calibration feeds (`auto-ridge=true`; a layer no ridge
helps there is left alone): no fixed value suits every model (MiniLM with domain-shifted
calibration text wants ~0.1, a CNN calibrated in-distribution ~1e-3). `importance=obs` ranks
channels by the error their removal leaves after that refit (greedy structured OBS, `obs.py`),
the natural partner of `reconstruct=true`; `scope=sensitivity` shifts the removal budget away
from groups whose pruning alone hurts the output most. Measured in docs/BENCHMARKS.md.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from typing import Any

import onnx_ir as ir

from onnxpress.ir.shapes import infer_shapes

from onnxpress.passes.base import Pass, PassResult, Tolerance
from onnxpress.passes.manager import PassContext
from onnxpress.passes.pruning.dependency import ChannelDependencies, ChannelDependencyAnalysis, Group
from onnxpress.passes.pruning.importance import AGGREGATES, SCORERS, score_classes
from onnxpress.passes.pruning.plan import PruningPlan, RatioRule, apply_pruning, select_classes
from onnxpress.passes.registry import register_pass

__all__ = ["PruneChannelsPass", "PrintPruningGroupsPass", "describe_groups", "node_matches", "parse_ignore"]

logger = logging.getLogger(__name__)


def parse_ignore(patterns: tuple[str, ...]) -> list[tuple[str, str]]:
    """`name`, `re:REGEX` (node names) or `op:Conv` (op types) -> (kind, pattern)."""
    out = []
    for p in patterns:
        if p.startswith("re:"):
            _compile(p)
            out.append(("re", p[3:]))
        elif p.startswith("op:"):
            out.append(("op", p[3:]))
        else:
            out.append(("name", p))
    return out


def _compile(pattern: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern[3:])
    except re.error as e:  # a ValueError reaches the user as a PipelineError naming the option
        raise ValueError(f"bad regular expression '{pattern}': {e}") from None


def node_matches(node: ir.Node, rules: list[tuple[str, str]]) -> bool:
    """Whether `node` matches any `parse_ignore` rule (by name, `re:` regex or `op:` type)."""
    for kind, pattern in rules:
        if kind == "name" and node.name == pattern:
            return True
        if kind == "re" and re.search(pattern, node.name or ""):
            return True
        if kind == "op" and node.op_type == pattern:
            return True
    return False


#: member roles an ignored node still lets shrink: its input side follows the layers before it
_INPUT_ROLES = ("in-channels", "in-features")


def _apply_ignores(deps: ChannelDependencies, rules: list[tuple[str, str]]) -> None:
    """An ignored node keeps its output channels (and everything tied to them); like
    Torch-Pruning's ignored layers, its input channels may still go with the layer before it."""
    if not rules:
        return
    for m in deps.members:
        if m.role not in _INPUT_ROLES and node_matches(m.node, rules):
            deps.freeze(m.elements, f"{m.node.op_type} '{m.node.name}' is ignored")


def describe_groups(groups: list[Group]) -> list[str]:
    """One line per group, then its members: what `print-pruning-groups` shows."""
    lines = []
    for g in groups:
        lines.append(g.describe())
        for m in g.members:
            lines.append(f"    {m.role:<13} {m.node.op_type} '{m.node.name}': {m.value.name} axis {m.axis}")
    return lines


@register_pass
class PruneChannelsPass(Pass):
    """Remove the least important channels of every coupled group (structured pruning).

    Applies to channels produced by Conv / ConvTranspose / Gemm / MatMul with constant weights and
    followed through the ops ChannelDependencyAnalysis understands. Leaves frozen groups alone:
    graph inputs and outputs, unknown ops, subgraphs, dynamic weights, lossy normalizations.
    `ignore` (node name, `re:REGEX`, `op:TYPE`) keeps a node's output channels; its input channels
    still follow the layer that produces them. `layer-ratios` entries are `PATTERN=RATIO` with the
    same pattern forms, matched against the producers of a group. After a run, `plan` holds the
    `PruningPlan` (None when nothing was removed), also recorded as
    `model.meta["onnxpress.pruning_plan"]`.
    """

    name = "prune-channels"
    plan: PruningPlan | None = None  # set by each run
    tolerance = Tolerance(rtol=1.0, atol=1e9, min_cosine=0.0)  # lossy by design: report, don't fail

    @dataclasses.dataclass(frozen=True)
    class Options:
        ratio: float = 0.3
        importance: str = "l2"
        aggregate: str = "mean"
        scope: str = "uniform"  # uniform | global | sensitivity (each group pruned alone on the data)
        round_to: int = 1
        max_layer_ratio: float = 0.8
        ignore: tuple[str, ...] = ()
        layer_ratios: tuple[str, ...] = ()  # "name=0.5" or "re:REGEX=0.5"
        lossy_norms: bool = False
        reconstruct: bool = False
        ridge: float = 0.03  # used when auto-ridge=false, or with too few feeds to hold some out
        auto_ridge: bool = True  # choose the ridge per layer on held-out calibration feeds
        sequential: bool = True  # refit from the pruned model's activations, layer after layer
        max_samples: int = 64

        def __post_init__(self) -> None:
            if not 0.0 <= self.ratio < 1.0:
                raise ValueError("ratio must be in [0, 1)")
            if self.importance not in SCORERS:
                raise ValueError(f"importance must be one of {', '.join(sorted(SCORERS))}")
            if self.aggregate not in AGGREGATES:
                raise ValueError(f"aggregate must be one of {', '.join(AGGREGATES)}")
            if self.scope not in ("uniform", "global", "sensitivity"):
                raise ValueError("scope must be uniform, global or sensitivity")
            if self.round_to < 1:
                raise ValueError("round-to must be at least 1")
            if not 0.0 < self.max_layer_ratio <= 1.0:
                raise ValueError("max-layer-ratio must be in (0, 1]")
            parse_ignore(self.ignore)
            for item in self.layer_ratios:
                pattern, _, value = item.rpartition("=")
                try:
                    ratio = float(value)
                except ValueError:
                    ratio = -1.0
                if not pattern or not 0.0 <= ratio < 1.0:
                    raise ValueError(f"layer-ratios entry '{item}' must be NAME=RATIO with RATIO in [0, 1)")
                if pattern.startswith("re:"):
                    _compile(pattern)

    def ratio_rules(self) -> tuple[RatioRule, ...]:
        rules = []
        for item in self.options.layer_ratios:
            pattern, _, value = item.rpartition("=")
            rules.append(RatioRule(pattern, float(value)))
        return tuple(rules)

    def run(self, model: ir.Model, am: Any) -> PassResult:
        opts = self.options
        self.plan = None
        infer_shapes(model)  # the rules need ranks and dims; inference only adds shape information
        deps = ChannelDependencyAnalysis(allow_lossy_norms=opts.lossy_norms).compute(model, am)
        _apply_ignores(deps, parse_ignore(opts.ignore))
        groups = deps.groups()
        live = [g for g in groups if g.prunable]
        stats: dict[str, Any] = {"groups": len(groups), "prunable_groups": len(live)}
        if not live or opts.ratio == 0.0:
            return PassResult(model, False, {**stats, "channels_removed": 0, "params_removed": 0})
        candidates = [c for g in live for c in g.prunable]
        activation_data = None
        ctx = PassContext.current()
        data_aware = opts.importance in ("activation", "obs")
        if data_aware or opts.reconstruct:
            if not ctx.feeds(limit=1):
                ctx.diagnose("prune-channels: no calibration data; "
                             + ("using weight importance" if data_aware else "no reconstruction"))
        if opts.importance == "activation" and ctx.feeds(limit=1):
            from onnxpress.passes.pruning.calibration import mean_abs_activation

            activation_data = mean_abs_activation(model, deps, ctx, limit=opts.max_samples)
        elif opts.importance == "obs" and ctx.feeds(limit=1):
            from onnxpress.passes.pruning.obs import obs_scores

            fallback = score_classes(deps, candidates, "l2", opts.aggregate)
            activation_data = obs_scores(model, deps, set(candidates), fallback, ctx, limit=opts.max_samples,
                                          max_fraction=opts.max_layer_ratio)
        scores = score_classes(deps, candidates, opts.importance, opts.aggregate, activation_data)
        group_ratios = None
        if opts.scope == "sensitivity":
            group_ratios = self._sensitivity_ratios(model, deps, live, scores, ctx, stats)
        pruned = select_classes(deps, groups, scores, ratio=opts.ratio, scope=opts.scope, round_to=opts.round_to,
                                max_layer_ratio=opts.max_layer_ratio, overrides=self.ratio_rules(),
                                group_ratios=group_ratios)
        if not pruned:
            return PassResult(model, False, {**stats, "channels_removed": 0, "params_removed": 0})
        original = model.clone() if opts.reconstruct and ctx.feeds(limit=1) else None
        plan = apply_pruning(model, deps, pruned)
        stats.update(
            channels_removed=sum(layer["channels_before"] - layer["channels_after"] for layer in plan.layers),
            params_removed=plan.params_removed,
            params_ratio=round(plan.params_after / plan.params_before, 4) if plan.params_before else 1.0,
            layers={layer["name"]: f"{layer['channels_before']}->{layer['channels_after']}" for layer in plan.layers},
        )
        if original is not None:
            from onnxpress.passes.pruning.reconstruct import reconstruct_consumers

            stats["reconstructed"] = reconstruct_consumers(original, model, plan, ctx,
                                                           ridge=None if opts.auto_ridge else opts.ridge,
                                                           sequential=opts.sequential, limit=opts.max_samples)
        self.plan = plan
        model.meta["onnxpress.pruning_plan"] = plan.to_dict()
        logger.info("prune-channels: removed %d channels, %d parameters", stats["channels_removed"], plan.params_removed)
        return PassResult(model, True, stats)


    def _sensitivity_ratios(self, model: ir.Model, deps: ChannelDependencies, live: list[Group],
                            scores: dict[int, float], ctx: PassContext, stats: dict[str, Any]) -> dict[int, float] | None:
        """Per-group ratios from each group's measured output error when pruned alone."""
        from onnxpress.passes.pruning.plan import select_classes as select
        from onnxpress.passes.pruning.sensitivity import allocate_ratios, group_sensitivities

        opts = self.options
        if ctx.runner is None or not ctx.feeds(limit=1):
            ctx.diagnose("prune-channels: scope=sensitivity needs calibration data; using uniform ratios")
            return None
        rules = parse_ignore(opts.ignore)

        def analyze(clone: ir.Model) -> ChannelDependencies:
            clone_deps = ChannelDependencyAnalysis(allow_lossy_norms=opts.lossy_norms).compute(clone, None)
            _apply_ignores(clone_deps, rules)
            return clone_deps

        def choose(g: Group) -> list[int]:
            return sorted(select(deps, [g], scores, ratio=opts.ratio, round_to=opts.round_to,
                                 max_layer_ratio=opts.max_layer_ratio))

        sensitivity = group_sensitivities(model, live, choose, analyze, ctx, limit=min(opts.max_samples, 8))
        ratios = allocate_ratios(live, sensitivity, opts.ratio, opts.max_layer_ratio)
        stats["sensitivity"] = {(g.producers[0].name if g.producers else str(g.index)):
                                f"{sensitivity[g.index]:.3g}->r{ratios[g.index]:.2f}" for g in live}
        return ratios


@register_pass
class PrintPruningGroupsPass(Pass):
    """Describe the channel groups, their members and why frozen groups are frozen (no change).

    The description goes to the log (info level) and to the PassContext diagnostics, so the CLI
    prints it under the summary.
    """

    name = "print-pruning-groups"
    preserved_analyses = "all"

    @dataclasses.dataclass(frozen=True)
    class Options:
        members: bool = False
        lossy_norms: bool = False

    def run(self, model: ir.Model, am: Any) -> PassResult:
        infer_shapes(model)
        deps = ChannelDependencyAnalysis(allow_lossy_norms=self.options.lossy_norms).compute(model, am)
        groups = deps.groups()
        lines = describe_groups(groups) if self.options.members else [g.describe() for g in groups]
        ctx = PassContext.current()
        for line in lines:
            logger.info("%s", line)
            ctx.diagnostics.append(line)
        prunable = sum(1 for g in groups if g.prunable)
        return PassResult(model, False, {"groups": len(groups), "prunable_groups": prunable})

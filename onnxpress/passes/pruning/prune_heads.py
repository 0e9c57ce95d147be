"""PruneHeadsPass: remove whole attention heads, so that the result is a smaller dense model.

`prune-heads{ratio=0.25 importance=l2 aggregate=mean round-to=1 ignore=... compensate-bias=true}`
finds the multi-head attention blocks (`attention.find_attention_blocks`, strict: a block that does
not match exactly is left alone and the reason is reported), scores every head from its slices of
Wq, Wk, Wv (columns, with the bias entries) and Wo (rows), and removes the `ratio` lowest-scoring
heads of each block as units, keeping at least one. The head size, and with it the 1/sqrt(dh)
scale, does not change; the head-count entries of the Reshape targets and every value shape that
carries H or H*dh do.

Because every row of a softmax sums to one, a removed head's V bias reaches the output as the
constant `bv_h @ Wo_h`; with `compensate-bias` (the default) it is added to the output projection's
bias, so a head whose V weights are zero is removed exactly.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any

import numpy as np
import onnx_ir as ir

from onnxpress.ir.shapes import infer_shapes

from onnxpress.passes.base import Pass, PassResult, Tolerance
from onnxpress.passes.cleanup import _util as u
from onnxpress.passes.pruning.attention import AttentionBlock, find_attention_blocks
from onnxpress.passes.pruning.importance import AGGREGATES
from onnxpress.passes.pruning.prune_channels import node_matches, parse_ignore
from onnxpress.passes.registry import register_pass

__all__ = ["PruneHeadsPass", "HEAD_SCORERS", "score_heads", "select_heads", "remove_heads"]

logger = logging.getLogger(__name__)

PLAN_KEY = "onnxpress.head_pruning_plan"


def _head_slices(block: AttentionBlock) -> dict[str, np.ndarray]:
    """Per member, an array [H, n] holding each head's slice flattened (float64)."""
    h, dh = block.num_heads, block.head_dim
    out = {}
    for name, p in zip("qkv", block.projections):
        w = np.asarray(p.weight.const_value.numpy(), dtype=np.float64)  # [D_in, H*dh]
        per_head = w.reshape(w.shape[0], h, dh).transpose(1, 0, 2).reshape(h, -1)
        if p.bias is not None:
            b = np.asarray(p.bias.const_value.numpy(), dtype=np.float64).reshape(h, dh)
            per_head = np.concatenate([per_head, b], axis=1)
        out[name] = per_head
    wo = np.asarray(block.out_weight.const_value.numpy(), dtype=np.float64)  # [H*dh, D_out]
    out["o"] = wo.reshape(h, -1)
    return out


def _norm_scores(p: int):
    def score(block: AttentionBlock, how: str) -> np.ndarray:
        slices = _head_slices(block)
        norms = np.stack([np.abs(s).sum(axis=1) if p == 1 else np.sqrt(np.square(s).sum(axis=1))
                          for s in slices.values()])
        return {"mean": np.mean, "sum": np.sum, "max": np.max}[how](norms, axis=0)

    return score


def _output_path(block: AttentionBlock, how: str) -> np.ndarray:
    """||Wv_h||·||Wo_h||: a bound on what the head adds to the output (attention weights sum to 1)."""
    slices = _head_slices(block)
    return np.sqrt(np.square(slices["v"]).sum(axis=1)) * np.sqrt(np.square(slices["o"]).sum(axis=1))


#: head scorers: (block, aggregate) -> score per head; lower is removed first
HEAD_SCORERS = {"l1": _norm_scores(1), "l2": _norm_scores(2), "vo": _output_path}


def score_heads(block: AttentionBlock, importance: str = "l2", aggregate: str = "mean") -> np.ndarray:
    if importance not in HEAD_SCORERS:
        raise ValueError(f"unknown head importance '{importance}'; choose one of {', '.join(sorted(HEAD_SCORERS))}")
    return HEAD_SCORERS[importance](block, aggregate)


def select_heads(scores: np.ndarray, ratio: float, round_to: int = 1) -> list[int]:
    """The heads to remove: the `ratio` lowest, at least one kept, the kept count a multiple of round-to."""
    total = len(scores)
    n = min(int(ratio * total), total - 1)
    if round_to > 1:
        kept = min(total, math.ceil((total - n) / round_to) * round_to)
        n = total - kept
    order = sorted(range(total), key=lambda i: (float(scores[i]), i))
    return sorted(order[: max(n, 0)])


def _set_const(value: ir.Value, array: np.ndarray) -> None:
    """A new tensor for the (unshared) initializer `value`; never writes into the old buffer."""
    value.const_value = ir.tensor(np.ascontiguousarray(array), name=value.name)
    value.shape = ir.Shape(list(array.shape))


def remove_heads(model: ir.Model, block: AttentionBlock, removed: list[int], *,
                 compensate_bias: bool = True) -> dict[str, Any]:
    """Slice the block's weights, rewrite its Reshape targets and value shapes; what was done."""
    h, dh = block.num_heads, block.head_dim
    kept_heads = h - len(removed)
    columns = np.ones(h * dh, dtype=bool)
    for i in removed:
        columns[i * dh:(i + 1) * dh] = False
    before = after = 0
    tensors: dict[str, dict[int, list[int]]] = {}
    dropped = np.flatnonzero(~columns).tolist()
    compensation = None
    if compensate_bias and block.v.bias is not None and block.out_bias is not None:
        bv = block.v.bias.const_value.numpy().astype(np.float64)
        wo = block.out_weight.const_value.numpy().astype(np.float64)
        compensation = bv[~columns] @ wo[~columns]
    for value, axis in [(p.weight, 1) for p in block.projections] + \
                       [(p.bias, 0) for p in block.projections if p.bias is not None] + [(block.out_weight, 0)]:
        array = value.const_value.numpy()
        new = np.compress(columns, array, axis=axis)
        before += array.size
        after += new.size
        tensors[value.name] = {axis: dropped}
        _set_const(value, new)
    if compensation is not None and np.any(compensation):
        bo = block.out_bias.const_value.numpy()
        _set_const(block.out_bias, (bo.astype(np.float64) + compensation).astype(bo.dtype))
    _rewrite_targets(model, block, kept_heads)
    for value, axis, unit in block.heads_axes:
        if value.shape is None:
            continue
        dims = list(value.shape)
        a = axis if axis >= 0 else len(dims) + axis
        if 0 <= a < len(dims) and dims[a] == h * unit:
            dims[a] = kept_heads * unit
            value.shape = ir.Shape(dims)
    return {"name": block.name, "heads_before": h, "heads_after": kept_heads, "head_dim": dh,
            "removed": list(removed), "tensors": tensors, "params_removed": before - after,
            "bias_compensated": compensation is not None and bool(np.any(compensation))}


def _rewrite_targets(model: ir.Model, block: AttentionBlock, kept_heads: int) -> None:
    """New initializers for the literal H / H*dh entries (targets may be shared: never edited)."""
    graph = model.graph
    names = u.NameScope(model)
    by_holder: dict[tuple[int, int, int], list] = {}
    for e in block.target_edits:
        by_holder.setdefault((id(e.reshape), id(e.holder), e.index), []).append(e)
    replaced: list[ir.Value] = []
    made: dict[tuple[int, bytes], ir.Value] = {}  # Q, K and V usually read the same target
    for edits in by_holder.values():
        first = edits[0]
        old = first.holder.inputs[first.index]
        replaced.append(old)
        array = u.const_array(old).copy()
        flat = array.reshape(-1)
        for e in edits:
            flat[e.offset] = kept_heads * e.unit
        key = (id(old), array.tobytes())
        if key not in made:
            made[key] = u.new_initializer(graph, names, f"{old.name}_heads{kept_heads}", array)
        new = made[key]
        if first.holder is first.reshape:
            first.reshape.replace_input_with(first.index, new)
            continue
        # a Concat building the target: rebuild it for this Reshape only (it may be shared)
        concat = first.holder
        inputs = list(concat.inputs)
        inputs[first.index] = new
        rebuilt = ir.Node("", "Concat", inputs, attributes=list(concat.attributes.values()),
                          name=names.fresh(f"{concat.name or 'concat'}_heads{kept_heads}"), num_outputs=1)
        rebuilt.outputs[0].name = names.fresh(f"{concat.outputs[0].name}_heads{kept_heads}")
        rebuilt.outputs[0].shape = concat.outputs[0].shape
        rebuilt.outputs[0].type = concat.outputs[0].type
        graph.insert_before(first.reshape, rebuilt)
        first.reshape.replace_input_with(1, rebuilt.outputs[0])
        if not concat.outputs[0].uses() and not concat.outputs[0].is_graph_output():
            graph.remove(concat, safe=True)
    for value in replaced:
        if graph.initializers.get(value.name) is value and u.unused(value) and not value.is_graph_input():
            graph.initializers.pop(value.name)


@register_pass
class PruneHeadsPass(Pass):
    """Remove the least important heads of every multi-head attention block (structured pruning).

    Applies to attention written out as MatMul / Reshape / Transpose / Softmax in the form torch
    exports (BERT, ViT, ...), after `-O2` has folded the shape computations. Leaves alone, with a
    reason in the stats: fused contrib attention ops, packed QKV projections, blocks whose
    intermediate values are read elsewhere, dynamic head counts, masks that differ per head.
    """

    name = "prune-heads"
    tolerance = Tolerance(rtol=1.0, atol=1e9, min_cosine=0.0)  # lossy by design: report, don't fail

    @dataclasses.dataclass(frozen=True)
    class Options:
        ratio: float = 0.25
        importance: str = "l2"
        aggregate: str = "mean"
        round_to: int = 1
        ignore: tuple[str, ...] = ()
        compensate_bias: bool = True

        def __post_init__(self) -> None:
            if not 0.0 <= self.ratio < 1.0:
                raise ValueError("ratio must be in [0, 1)")
            if self.importance not in HEAD_SCORERS:
                raise ValueError(f"importance must be one of {', '.join(sorted(HEAD_SCORERS))}")
            if self.aggregate not in AGGREGATES:
                raise ValueError(f"aggregate must be one of {', '.join(AGGREGATES)}")
            if self.round_to < 1:
                raise ValueError("round-to must be at least 1")
            parse_ignore(self.ignore)

    def run(self, model: ir.Model, am: Any) -> PassResult:
        opts = self.options
        infer_shapes(model)  # the pattern checks need ranks (the mask's, the heads')
        blocks, refused = find_attention_blocks(model)
        rules = parse_ignore(opts.ignore)
        chosen: list[tuple[AttentionBlock, list[int]]] = []
        for block in blocks:
            if rules and any(node_matches(n, rules) for n in block.nodes):
                refused[block.name] = "ignored"
                continue
            removed = select_heads(score_heads(block, opts.importance, opts.aggregate), opts.ratio, opts.round_to)
            if removed:
                chosen.append((block, removed))
        stats: dict[str, Any] = {"attention_blocks": len(blocks), "heads_removed": 0, "params_removed": 0}
        if refused:
            stats["skipped"] = dict(refused)
            logger.debug("prune-heads skipped: %s", refused)
        self.plan: dict[str, Any] = {"blocks": [], "skipped": dict(refused)}
        if not chosen:
            return PassResult(model, False, stats)
        for block, removed in chosen:
            self.plan["blocks"].append(remove_heads(model, block, removed, compensate_bias=opts.compensate_bias))
        layers = self.plan["blocks"]
        stats.update(
            heads_removed=sum(b["heads_before"] - b["heads_after"] for b in layers),
            params_removed=sum(b["params_removed"] for b in layers),
            heads={b["name"]: f"{b['heads_before']}->{b['heads_after']}" for b in layers},
        )
        model.meta[PLAN_KEY] = self.plan
        logger.info("prune-heads: removed %d heads in %d blocks, %d parameters",
                    stats["heads_removed"], len(layers), stats["params_removed"])
        return PassResult(model, True, stats)

"""Where QuantizeLinear / DequantizeLinear go: per-op rules read against the backend's capabilities.

Pure planning, no mutation: `candidates` lists the nodes the target could run quantized (so the
pass knows which tensors to calibrate), and `place` turns candidates plus calibrated ranges into a
`Plan` — which nodes run quantized, which tensors get their own scale, which share the scale of
their input, which weights and biases become integer initializers, and which nodes stay float and
why. The per-op rules themselves (`RULES`, `FRAGILE`, folding) live in `rules`. They are checked in
this order for one node:

* an op is quantized only if the backend lists it in `Capabilities.qdq_ops` and we have a rule
  for it (`RULES`); norms and the pieces of decomposed norms / GELU (`FRAGILE`) never are;
* excluded (`exclude=` by name, `re:` regex, `op:` type), inside a function, or inside a subgraph
  whose tensors were not calibrated: float;
* every float activation input and (for ops whose integer kernel needs it) the output must have a
  clean calibrated range: ranges flagged `sentinel` (attention masks near -3.4e38) or with
  |value| >= 1e30 keep the node float, as does a Concat whose inputs' magnitudes differ by more
  than `range_ratio` (box coordinates joined with scores);
* constant inputs become quantized weights only where the rule says which per-channel axis they
  have (Conv 0, ConvTranspose 1, MatMul [K, N] 1, Gemm 0 or 1 by transB);
* a constant operand of Add / Mul (a bias, hard-swish's `+ 3`, a scale) becomes a per-tensor
  integer initializer of the *activation* type with its own scale, + DequantizeLinear: ORT's
  QLinearAdd / QLinearMul take both inputs in one type. Only constants that nothing else reads as a
  weight, and without sentinel values (an additive mask of -1e38 keeps its Add float). Such an
  affine step right after a fragile op (a decomposed norm's `var + eps`, `x̂ · γ + β`, GELU's
  `erf + 1`), and chains of them, stay float with it; a constant operand of Concat / Where keeps
  the node float;
* the residual stream of a transformer stays float: Adds whose sum only a norm reads, and the
  single-use (bias) Adds feeding them (`residual_stream_adds`: outlier channels make one 8-bit
  scale useless there); a MatMul feeding such a bias Add keeps integer compute with a float
  output, its `(m + b) + r` re-associated to `(m + r) + b` so ORT does not fuse it into a float Gemm;
* Relu / Clip directly after a quantized op whose kernel needs a quantized output are folded: the
  output QDQ goes after the activation, none between (ORT then drops the activation);
* data-movement ops (Reshape, Transpose, Gather, Slice, Split, MaxPool, Resize, ...) whose input is
  quantized share its scale, and only where something quantized reads them;
* a Gather reading a constant float table (embeddings) quantizes the table like a constant
  operand (activation type, per tensor) and re-quantizes its output with the table's own scale:
  ORT drops that DQ -> Gather -> Q to an integer Gather, so the table is stored and read in 8 bits.
  Tables read by anything but Gather (tied with an output projection) are left to the weight path.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import onnx_ir as ir

from onnxpress.passes.cleanup import _util as u
from onnxpress.passes.quantize.residual import reassociable_bias_add, residual_stream_adds
from onnxpress.passes.quantize.rules import (
    FOLDABLE,
    FRAGILE,
    NOT_FLOAT,
    RULES,
    SENTINEL_ABS,
    OpRule,
    feeds_bias_add,
    fold_target,
    is_float,
)

# The rules are re-exported: backends and the other quantize modules read them from here.
__all__ = ["FOLDABLE", "FRAGILE", "NOT_FLOAT", "OpRule", "Plan", "RULES", "SENTINEL_ABS", "candidates",
           "feeds_bias_add", "fold_target", "graphs_of", "is_float", "place"]

logger = logging.getLogger(__name__)

# ----------------------------------------------------------------------------------------------
# The plan
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass
class WeightUse:
    """One constant quantized once; every user (quantized or not) reads the same DQ output."""

    value: ir.Value
    axis: int | None
    users: list[tuple[ir.Node, int]] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class Plan:
    """What the pass will do; built without touching the model."""

    nodes: list[ir.Node] = dataclasses.field(default_factory=list)  # quantized compute nodes
    #: tensors with their own scale -> (min, max) to derive it from
    tensors: dict[ir.Value, tuple[float, float]] = dataclasses.field(default_factory=dict)
    #: data-movement outputs -> the tensor whose scale they reuse (already resolved to a root)
    shared: dict[ir.Value, ir.Value] = dataclasses.field(default_factory=dict)
    shared_nodes: list[ir.Node] = dataclasses.field(default_factory=list)
    weights: dict[ir.Value, WeightUse] = dataclasses.field(default_factory=dict)
    #: constant operands quantized like activations (activation type, per tensor) -> (min, max)
    constants: dict[ir.Value, tuple[float, float]] = dataclasses.field(default_factory=dict)
    #: (node, bias input index, weight value, activation value)
    biases: list[tuple[ir.Node, int, ir.Value, ir.Value]] = dataclasses.field(default_factory=list)
    folded: list[ir.Node] = dataclasses.field(default_factory=list)
    table_gathers: list[ir.Node] = dataclasses.field(default_factory=list)  # Gathers of quantized tables
    #: float bias Adds `(m + b) + r` to rewrite as `(m + r) + b` (see `residual_stream_adds`)
    reassociate: list[ir.Node] = dataclasses.field(default_factory=list)
    kept_float: dict[str, str] = dataclasses.field(default_factory=dict)  # node name -> reason
    tensors_kept_float: dict[str, str] = dataclasses.field(default_factory=dict)  # tensor -> reason

    def keep_float(self, node: ir.Node, reason: str) -> None:
        logger.debug("%s (%s) stays float: %s", node.name, node.op_type, reason)
        self.kept_float[node.name or f"<{node.op_type}>"] = reason

    def scale_source(self, value: ir.Value) -> ir.Value | None:
        """The tensor whose scale `value` carries (itself, or the root it shares with)."""
        if value in self.tensors:
            return value
        return self.shared.get(value)


# ----------------------------------------------------------------------------------------------
# Candidates
# ----------------------------------------------------------------------------------------------
def graphs_of(model: ir.Model) -> list[ir.Graph]:
    """The main graph and every (nested) subgraph; function bodies are never quantized."""
    return list(model.graphs())


def exclusion_matcher(patterns: Sequence[str]) -> Callable[[ir.Node], bool]:
    """`name`, `re:REGEX` (searched in the node name) or `op:Type`."""
    names, types, regexes = set(), set(), []
    for pattern in patterns:
        if pattern.startswith("re:"):
            regexes.append(re.compile(pattern[3:]))
        elif pattern.startswith("op:"):
            types.add(pattern[3:])
        else:
            names.add(pattern)

    def excluded(node: ir.Node) -> bool:
        name = node.name or ""
        return name in names or node.op_type in types or any(r.search(name) for r in regexes)

    return excluded


def _data_inputs(node: ir.Node, rule: OpRule) -> list[tuple[int, ir.Value]]:
    indices = range(len(node.inputs)) if rule.inputs is None else rule.inputs
    return [(i, node.inputs[i]) for i in indices if i < len(node.inputs) and node.inputs[i] is not None]


def _shared_outputs(node: ir.Node) -> list[ir.Value]:
    # MaxPool's optional second output holds indices, not data.
    return node.outputs[:1] if node.op_type == "MaxPool" else list(node.outputs)


def candidates(model: ir.Model, qdq_ops: Iterable[str]) -> list[tuple[ir.Node, OpRule]]:
    """Nodes the target could run quantized, in graph order (main graph first); excluded ones too,
    so that the plan can say they were."""
    allowed = {op for op in qdq_ops if op in RULES and op not in FRAGILE}
    out = []
    for graph in graphs_of(model):
        for node in graph:
            if u.is_onnx_op(node, *allowed):
                out.append((node, RULES[node.op_type]))
    return out


def tensors_to_calibrate(model: ir.Model, cands: Sequence[tuple[ir.Node, OpRule]],
                         excluded: Callable[[ir.Node], bool]) -> list[str]:
    """Names of the float tensors whose ranges could set a scale."""
    names: dict[str, None] = {}
    for node, rule in cands:
        if rule.shares_scale or excluded(node):
            continue
        for _, value in _data_inputs(node, rule):
            if is_float(value) and u.const_array(value) is None:
                names[value.name] = None
        if (rule.output_q or feeds_bias_add(node)) and rule.known_range is None:
            folded = fold_target(node, excluded)
            out = (folded or node).outputs[0]
            if is_float(out):
                names[out.name] = None
    return [n for n in names if n]


# ----------------------------------------------------------------------------------------------
# Placement
# ----------------------------------------------------------------------------------------------
def range_problem(rng: Any) -> str | None:
    """Why a calibrated range cannot set a scale, or None when it can."""
    if rng is None:
        return "not calibrated"
    flags = getattr(rng, "flags", None) or ()
    if "sentinel" in flags:
        return "sentinel values (mask)"
    if "empty" in flags or "nan" in flags:
        return "no finite values" if "empty" in flags else "NaN values"
    lo, hi = float(rng.min), float(rng.max)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return "non-finite range"
    if max(abs(lo), abs(hi)) >= SENTINEL_ABS:
        return "sentinel values (mask)"
    return None


def _absmax(rng: Any) -> float:
    return max(abs(float(rng.min)), abs(float(rng.max)))


@dataclasses.dataclass
class _Decision:
    acts: list[ir.Value]
    weights: list[tuple[int, ir.Value, int | None]]
    constants: list[ir.Value]
    output: ir.Value | None
    output_range: tuple[float, float] | None
    folded: ir.Node | None


def _decide(
    node: ir.Node,
    rule: OpRule,
    ranges: Mapping[str, Any],
    excluded: Callable[[ir.Node], bool],
    range_ratio: float,
    bad_tensors: dict[str, str],
    float_output: bool = False,
) -> _Decision | str:
    """What quantizing `node` needs, or the reason it stays float. `float_output`: a MatMul before
    a bias Add that will be re-associated (no Q needed on its output)."""
    acts: list[ir.Value] = []
    weights: list[tuple[int, ir.Value, int | None]] = []
    constants: list[ir.Value] = []
    for index, value in _data_inputs(node, rule):
        if not is_float(value):
            if value.dtype is None:
                return f"input {value.name!r} has an unknown type"
            continue  # Where's condition, Gather's indices ...
        array = u.const_array(value)
        if array is not None:
            if rule.constant_operands:
                problem = _constant_operand_problem(value, array)
                if problem:
                    return problem
                constants.append(value)
                continue
            if rule.weight_axis is None:
                return "constant operand"
            weights.append((index, value, rule.weight_axis(node, index, array.ndim)))
            continue
        problem = range_problem(ranges.get(value.name))
        if problem:
            bad_tensors[value.name] = problem
            return f"input {value.name!r}: {problem}"
        acts.append(value)
    if not acts:
        return NOT_FLOAT if not (weights or constants) else "no activation input"
    if node.op_type == "Concat" and len(acts) > 1:
        mags = [m for m in (_absmax(ranges[v.name]) for v in acts) if m > 0]
        if mags and max(mags) > range_ratio * min(mags):
            for v in node.outputs:
                bad_tensors[v.name] = f"joins ranges {min(mags):.3g} and {max(mags):.3g}"
            return f"inputs' ranges differ {max(mags) / min(mags):.0f}x (> range-ratio {range_ratio:g})"
    output, output_range, folded = None, None, None
    if rule.output_q or (feeds_bias_add(node) and not float_output):
        folded = fold_target(node, excluded)
        output = (folded or node).outputs[0]
        if not is_float(output):
            return "output is not float32"
        if rule.known_range is not None and folded is None:
            output_range = rule.known_range
        else:
            rng = ranges.get(output.name)
            problem = range_problem(rng)
            if problem:
                bad_tensors[output.name] = problem
                return f"output {output.name!r}: {problem}"
            output_range = (float(rng.min), float(rng.max))
    return _Decision(acts, weights, constants, output, output_range, folded)


def _after_fragile(node: ir.Node, rule: OpRule, fragile_chain: set[ir.Node]) -> bool:
    """An Add / Mul with a constant operand whose other input comes from a fragile op (or such a step)."""
    if not rule.constant_operands:
        return False
    inputs = [v for v in node.inputs if v is not None]
    if not any(u.const_array(v) is not None for v in inputs):
        return False
    return any(v.producer() in fragile_chain for v in inputs if u.const_array(v) is None)


def _constant_operand_problem(value: ir.Value, array: Any) -> str | None:
    """Why a constant operand of Add / Mul cannot get its own activation-type scale, or None."""
    if array.size == 0 or not bool(np.all(np.isfinite(array))):
        return "constant operand with non-finite values"
    if float(np.abs(array).max()) >= SENTINEL_ABS:
        return "constant operand with sentinel values (mask)"
    # A constant that is also a Conv / MatMul weight gets the weight's int8 form; one tensor, one form.
    if any(not u.is_onnx_op(use.node, "Add", "Mul") for use in value.uses()):
        return "constant operand shared with a weight"
    return None


def place(
    model: ir.Model,
    cands: Sequence[tuple[ir.Node, OpRule]],
    ranges: Mapping[str, Any],
    excluded: Callable[[ir.Node], bool],
    *,
    range_ratio: float = 100.0,
    per_channel: bool = True,
    quantize_bias: bool = True,
    keep_float: Mapping[ir.Node, str] | None = None,
) -> Plan:
    """Decide, from candidates and calibrated ranges, everything the pass will insert.

    `keep_float`: nodes that stay float whatever the rules say (the sensitivity fallback's and the
    part timing's choices; data movement too), with the reason the stats report."""
    keep_float = keep_float or {}
    plan = Plan()
    calibrated_graphs = _calibrated_graphs(model, ranges)
    compute = [(n, r) for n, r in cands if not r.shares_scale]
    movers = [(n, r) for n, r in cands if r.shares_scale]

    weight_axes: dict[ir.Value, set[int | None]] = {}
    residual = residual_stream_adds(graphs_of(model), excluded)
    order = {node: i for graph in graphs_of(model) for i, node in enumerate(graph)}
    fragile_chain: set[ir.Node] = set()  # fragile ops and the constant-operand steps after them
    for graph in graphs_of(model):
        fragile_chain.update(n for n in graph if u.is_onnx_op(n, *FRAGILE))
    for node, rule in compute:
        if excluded(node):
            plan.keep_float(node, "excluded")
            continue
        if node in keep_float:
            plan.keep_float(node, keep_float[node])
            continue
        if _after_fragile(node, rule, fragile_chain):
            fragile_chain.add(node)
            plan.keep_float(node, "affine step of a fragile op (norm / GELU piece)")
            continue
        if node.graph is not model.graph and node.graph not in calibrated_graphs:
            plan.keep_float(node, "subgraph not calibrated")
            continue
        if node in residual:
            plan.keep_float(node, "residual stream into a norm")
            continue
        bias_add = reassociable_bias_add(node, residual, order)
        decision = _decide(node, rule, ranges, excluded, range_ratio, plan.tensors_kept_float,
                           float_output=bias_add is not None)
        if decision is NOT_FLOAT:  # shape arithmetic on int64 and the like: nothing to report
            continue
        if isinstance(decision, str):
            plan.keep_float(node, decision)
            continue
        plan.nodes.append(node)
        if bias_add is not None:
            plan.reassociate.append(bias_add)
        for value in decision.acts:  # a producer's known output range (Softmax: [0, 1]) wins
            rng = ranges[value.name]
            plan.tensors.setdefault(value, (float(rng.min), float(rng.max)))
        if decision.output is not None and decision.output_range is not None:
            plan.tensors[decision.output] = decision.output_range
        if decision.folded is not None:
            plan.folded.append(decision.folded)
        for value in decision.constants:
            array = u.const_array(value)
            plan.constants[value] = (float(array.min()), float(array.max()))
        for index, value, axis in decision.weights:
            use = plan.weights.setdefault(value, WeightUse(value, axis if per_channel else None))
            use.users.append((node, index))
            weight_axes.setdefault(value, set()).add(axis if per_channel else None)
        if quantize_bias and rule.bias is not None and rule.bias < len(node.inputs):
            bias = node.inputs[rule.bias]
            weight = next((v for i, v, _ in decision.weights if i == 1), None)
            if bias is not None and weight is not None and is_float(bias) and u.const_array(bias) is not None \
                    and node.inputs[0] in decision.acts:
                plan.biases.append((node, rule.bias, weight, node.inputs[0]))

    for value, axes in weight_axes.items():
        if len(axes) > 1:  # a tied weight read along different axes: one per-tensor scale for all
            plan.weights[value].axis = None
    _place_table_gathers(plan, model, movers, excluded, calibrated_graphs)
    _place_movers(plan, movers, excluded, keep_float)
    return plan


def _place_table_gathers(plan: Plan, model: ir.Model, movers: Sequence[tuple[ir.Node, OpRule]],
                         excluded: Callable[[ir.Node], bool], calibrated_graphs: set[ir.Graph]) -> None:
    """Gathers of constant float tables: table and output share one scale, the table's range."""
    for node, _ in movers:
        if node.op_type != "Gather" or excluded(node) or not node.inputs or not is_float(node.inputs[0]):
            continue
        if node.graph is not model.graph and node.graph not in calibrated_graphs:
            continue
        table = node.inputs[0]
        array = u.const_array(table)
        if array is None or table in plan.weights or not is_float(node.outputs[0]):
            continue
        if array.size == 0 or not bool(np.all(np.isfinite(array))) or float(np.abs(array).max()) >= SENTINEL_ABS:
            continue
        if any(not u.is_onnx_op(use.node, "Gather") for use in table.uses()):
            continue
        rng = (float(array.min()), float(array.max()))
        plan.constants[table] = rng
        plan.tensors[node.outputs[0]] = rng  # overrides a reader's calibrated range: one scale
        plan.table_gathers.append(node)


def _place_movers(plan: Plan, movers: Sequence[tuple[ir.Node, OpRule]], excluded: Callable[[ir.Node], bool],
                  keep_float: Mapping[ir.Node, str]) -> None:
    """Data movement shares its input's scale where the input is quantized and a reader is too."""
    chosen: list[ir.Node] = []
    shared: dict[ir.Value, ir.Value] = {}
    for node, _ in movers:  # graph order is topological: chains resolve front to back
        if excluded(node):
            continue
        if node in keep_float:
            plan.keep_float(node, keep_float[node])
            continue
        data = node.inputs[0] if node.inputs else None
        if data is None or not is_float(data):
            continue
        root = data if data in plan.tensors else shared.get(data)
        if root is None:
            continue
        chosen.append(node)
        for out in _shared_outputs(node):
            shared[out] = root
    quantized = set(plan.nodes)
    kept: set[ir.Node] = set()
    for node in reversed(chosen):  # keep a mover only when something quantized reads its output
        readers = {use.node for out in _shared_outputs(node) for use in out.uses()}
        if readers & quantized or readers & kept:
            kept.add(node)
    for node in chosen:
        if node not in kept:
            continue
        plan.shared_nodes.append(node)
        for out in _shared_outputs(node):
            plan.tensors.pop(out, None)  # the input's scale wins over the output's own
            plan.shared[out] = shared[out]


def _calibrated_graphs(model: ir.Model, ranges: Mapping[str, Any]) -> set[ir.Graph]:
    """Subgraphs where at least one value produced inside has a calibrated range."""
    out = set()
    for graph in graphs_of(model)[1:]:
        if any(v.name in ranges for node in graph for v in node.outputs):
            out.add(graph)
    return out


def count_by_type(nodes: Iterable[ir.Node]) -> dict[str, int]:
    return dict(sorted(Counter(n.op_type for n in nodes).items()))

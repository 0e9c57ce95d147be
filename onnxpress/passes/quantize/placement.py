"""Where QuantizeLinear / DequantizeLinear go: per-op rules read against the backend's capabilities.

Pure planning, no mutation: `candidates` lists the nodes the target could run quantized (so the
pass knows which tensors to calibrate), and `place` turns candidates plus calibrated ranges into a
`Plan` — which nodes run quantized, which tensors get their own scale, which share the scale of
their input, which weights and biases become integer initializers, and which nodes stay float and
why. The rules, in the order they are checked for one node:

* an op is quantized only if the backend lists it in `Capabilities.qdq_ops` and we have a rule
  for it (`RULES`); norms and the pieces of decomposed norms / GELU (`FRAGILE`) never are;
* excluded (`exclude=` by name, `re:` regex, `op:` type), inside a function, or inside a subgraph
  whose tensors were not calibrated: float;
* every float activation input and (for ops whose integer kernel needs it) the output must have a
  clean calibrated range: ranges flagged `sentinel` (attention masks near -3.4e38) or with
  |value| >= 1e30 keep the node float, as does a Concat whose inputs' magnitudes differ by more
  than `range_ratio` (box coordinates joined with scores);
* constant inputs become quantized weights only where the rule says which per-channel axis they
  have (Conv 0, ConvTranspose 1, MatMul [K, N] 1, Gemm 0 or 1 by transB); a constant operand of
  Add / Mul / Concat / Where keeps the node float (a bias Add after MatMul stays float, which ORT
  folds into MatMulIntegerToFloat);
* Relu / Clip directly after a quantized op whose kernel needs a quantized output are folded: the
  output QDQ goes after the activation, none between (ORT then drops the activation);
* data-movement ops (Reshape, Transpose, Gather, Slice, Split, MaxPool, Resize, ...) whose input is
  quantized share its scale, and only where something quantized reads them.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import onnx_ir as ir

from onnxpress.passes.cleanup import _util as u

__all__ = ["FRAGILE", "OpRule", "Plan", "RULES", "SENTINEL_ABS", "candidates", "graphs_of", "place"]

logger = logging.getLogger(__name__)

#: A calibrated |value| this large is a mask / sentinel, never a signal worth a scale.
SENTINEL_ABS = 1e30

#: Numerically fragile ops: quantizing their inputs or outputs destroys accuracy (REFERENCES.md).
FRAGILE = frozenset(
    {
        "LayerNormalization", "RMSNormalization", "SimplifiedLayerNormalization", "GroupNormalization",
        "InstanceNormalization", "Pow", "Sqrt", "Div", "Reciprocal", "ReduceMean", "Erf", "Exp", "Log",
    }
)

#: Activations ORT removes in front of a Q whose zero point is the type's minimum (ReLU) or whose
#: range the clip covers: folded into the producer's output range.
FOLDABLE = frozenset({"Relu", "Clip"})

#: `_decide`'s answer for a node without float data (int64 shape arithmetic): not a candidate at all.
NOT_FLOAT = "no float inputs"

AxisFn = Callable[[ir.Node, int, int], "int | None"]


@dataclasses.dataclass(frozen=True)
class OpRule:
    """How one op type is quantized.

    inputs: indices of the float inputs to quantize (None: all inputs).
    weight_axis: (node, input index, weight rank) -> per-channel axis or None (per-tensor); where
        set, constant inputs become quantized weights; where None, a constant input keeps the op
        float.
    bias: index of an int32 bias input (scale = s_input0 · s_weight).
    output_q: the integer kernel needs a quantized output (QLinearConv, QLinearAdd, ...); MatMul
        and Gemm fuse without one (MatMulIntegerToFloat, QGemm with float output).
    shares_scale: data movement: the outputs take the input's scale, no new scale.
    known_range: the output's range is known exactly (Softmax, Sigmoid): no calibration needed.
    """

    inputs: tuple[int, ...] | None = (0,)
    weight_axis: AxisFn | None = None
    bias: int | None = None
    output_q: bool = True
    shares_scale: bool = False
    known_range: tuple[float, float] | None = None


def _conv_axis(node: ir.Node, index: int, rank: int) -> int | None:
    return 0 if index == 1 else None


def _conv_transpose_axis(node: ir.Node, index: int, rank: int) -> int | None:
    # W is [C_in, C_out / group, k...]: axis 1 holds every output channel only when group == 1.
    return 1 if index == 1 and u.attr_int(node, "group", 1) == 1 else None


def _gemm_axis(node: ir.Node, index: int, rank: int) -> int | None:
    if index != 1 or rank != 2:
        return None
    return 0 if u.attr_int(node, "transB", 0) else 1


def _matmul_axis(node: ir.Node, index: int, rank: int) -> int | None:
    return 1 if index == 1 and rank == 2 else None


_POINTWISE = OpRule()
_SHARED = OpRule(output_q=False, shares_scale=True)

RULES: dict[str, OpRule] = {
    "Conv": OpRule(inputs=(0, 1), weight_axis=_conv_axis, bias=2),
    "ConvTranspose": OpRule(inputs=(0, 1), weight_axis=_conv_transpose_axis, bias=2),
    "Gemm": OpRule(inputs=(0, 1), weight_axis=_gemm_axis, bias=2, output_q=False),
    "MatMul": OpRule(inputs=(0, 1), weight_axis=_matmul_axis, output_q=False),
    "Add": OpRule(inputs=None),
    "Mul": OpRule(inputs=None),
    "Concat": OpRule(inputs=None),
    "Where": OpRule(inputs=(1, 2)),
    "AveragePool": _POINTWISE,
    "GlobalAveragePool": _POINTWISE,
    "LeakyRelu": _POINTWISE,
    "Softmax": OpRule(known_range=(0.0, 1.0)),
    "Sigmoid": OpRule(known_range=(0.0, 1.0)),
    **{
        op: _SHARED
        for op in (
            "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Gather", "GatherElements", "Slice",
            "Split", "MaxPool", "Resize", "Expand", "Tile", "DepthToSpace", "SpaceToDepth",
        )
    },
}


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
    #: (node, bias input index, weight value, activation value)
    biases: list[tuple[ir.Node, int, ir.Value, ir.Value]] = dataclasses.field(default_factory=list)
    folded: list[ir.Node] = dataclasses.field(default_factory=list)
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
    return [model.graph, *model.graph.subgraphs()]


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


def _is_float(value: ir.Value | None) -> bool:
    return value is not None and value.dtype == ir.DataType.FLOAT


def _data_inputs(node: ir.Node, rule: OpRule) -> list[tuple[int, ir.Value]]:
    indices = range(len(node.inputs)) if rule.inputs is None else rule.inputs
    return [(i, node.inputs[i]) for i in indices if i < len(node.inputs) and node.inputs[i] is not None]


def _shared_outputs(node: ir.Node) -> list[ir.Value]:
    # MaxPool's optional second output holds indices, not data.
    return node.outputs[:1] if node.op_type == "MaxPool" else list(node.outputs)


def fold_target(node: ir.Node, excluded: Callable[[ir.Node], bool]) -> ir.Node | None:
    """The Relu / Clip whose output carries `node`'s quantized output, or None."""
    out = node.outputs[0]
    if out.is_graph_output() or len(out.uses()) != 1:
        return None
    user = next(iter(out.uses())).node
    if not u.is_onnx_op(user, *FOLDABLE) or excluded(user) or not _is_float(user.outputs[0]):
        return None
    if user.op_type == "Clip" and any(
        v is not None and u.const_array(v) is None for v in user.inputs[1:]
    ):
        return None
    return user


def feeds_bias_add(node: ir.Node) -> bool:
    """A MatMul whose only reader adds a constant: without a Q on its output ORT fuses the pair
    into a float Gemm (with Reshapes for N-d inputs) and the integer MatMul is lost."""
    out = node.outputs[0]
    if node.op_type != "MatMul" or out.is_graph_output() or len(out.uses()) != 1:
        return False
    user = next(iter(out.uses())).node
    return u.is_onnx_op(user, "Add") and any(
        v is not None and v is not out and u.const_array(v) is not None for v in user.inputs
    )


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
            if _is_float(value) and u.const_array(value) is None:
                names[value.name] = None
        if (rule.output_q or feeds_bias_add(node)) and rule.known_range is None:
            folded = fold_target(node, excluded)
            out = (folded or node).outputs[0]
            if _is_float(out):
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
) -> _Decision | str:
    """What quantizing `node` needs, or the reason it stays float."""
    acts: list[ir.Value] = []
    weights: list[tuple[int, ir.Value, int | None]] = []
    for index, value in _data_inputs(node, rule):
        if not _is_float(value):
            if value.dtype is None:
                return f"input {value.name!r} has an unknown type"
            continue  # Where's condition, Gather's indices ...
        array = u.const_array(value)
        if array is not None:
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
        return NOT_FLOAT if not weights else "no activation input"
    if node.op_type == "Concat" and len(acts) > 1:
        mags = [m for m in (_absmax(ranges[v.name]) for v in acts) if m > 0]
        if mags and max(mags) > range_ratio * min(mags):
            for v in node.outputs:
                bad_tensors[v.name] = f"joins ranges {min(mags):.3g} and {max(mags):.3g}"
            return f"inputs' ranges differ {max(mags) / min(mags):.0f}x (> range-ratio {range_ratio:g})"
    output, output_range, folded = None, None, None
    if rule.output_q or feeds_bias_add(node):
        folded = fold_target(node, excluded)
        output = (folded or node).outputs[0]
        if not _is_float(output):
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
    return _Decision(acts, weights, output, output_range, folded)


def place(
    model: ir.Model,
    cands: Sequence[tuple[ir.Node, OpRule]],
    ranges: Mapping[str, Any],
    excluded: Callable[[ir.Node], bool],
    *,
    range_ratio: float = 100.0,
    per_channel: bool = True,
    quantize_bias: bool = True,
) -> Plan:
    """Decide, from candidates and calibrated ranges, everything the pass will insert."""
    plan = Plan()
    calibrated_graphs = _calibrated_graphs(model, ranges)
    compute = [(n, r) for n, r in cands if not r.shares_scale]
    movers = [(n, r) for n, r in cands if r.shares_scale]

    weight_axes: dict[ir.Value, set[int | None]] = {}
    for node, rule in compute:
        if excluded(node):
            plan.keep_float(node, "excluded")
            continue
        if node.graph is not model.graph and node.graph not in calibrated_graphs:
            plan.keep_float(node, "subgraph not calibrated")
            continue
        decision = _decide(node, rule, ranges, excluded, range_ratio, plan.tensors_kept_float)
        if decision is NOT_FLOAT:  # shape arithmetic on int64 and the like: nothing to report
            continue
        if isinstance(decision, str):
            plan.keep_float(node, decision)
            continue
        plan.nodes.append(node)
        for value in decision.acts:  # a producer's known output range (Softmax: [0, 1]) wins
            rng = ranges[value.name]
            plan.tensors.setdefault(value, (float(rng.min), float(rng.max)))
        if decision.output is not None and decision.output_range is not None:
            plan.tensors[decision.output] = decision.output_range
        if decision.folded is not None:
            plan.folded.append(decision.folded)
        for index, value, axis in decision.weights:
            use = plan.weights.setdefault(value, WeightUse(value, axis if per_channel else None))
            use.users.append((node, index))
            weight_axes.setdefault(value, set()).add(axis if per_channel else None)
        if quantize_bias and rule.bias is not None and rule.bias < len(node.inputs):
            bias = node.inputs[rule.bias]
            weight = next((v for i, v, _ in decision.weights if i == 1), None)
            if bias is not None and weight is not None and _is_float(bias) and u.const_array(bias) is not None \
                    and node.inputs[0] in decision.acts:
                plan.biases.append((node, rule.bias, weight, node.inputs[0]))

    for value, axes in weight_axes.items():
        if len(axes) > 1:  # a tied weight read along different axes: one per-tensor scale for all
            plan.weights[value].axis = None
    _place_movers(plan, movers, excluded)
    return plan


def _place_movers(plan: Plan, movers: Sequence[tuple[ir.Node, OpRule]], excluded: Callable[[ir.Node], bool]) -> None:
    """Data movement shares its input's scale where the input is quantized and a reader is too."""
    chosen: list[ir.Node] = []
    shared: dict[ir.Value, ir.Value] = {}
    for node, _ in movers:  # graph order is topological: chains resolve front to back
        if excluded(node):
            continue
        data = node.inputs[0] if node.inputs else None
        if data is None or not _is_float(data):
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

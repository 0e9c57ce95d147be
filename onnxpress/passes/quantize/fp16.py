"""ConvertFp16Pass: float32 compute and weights to float16, fragile ops kept in float32.

`convert-fp16{keep-io=true fragile=true block=...}` decides for every main-graph node whether it
computes in float16 or stays float32, then gives every float32 value one home type and inserts a
`Cast` wherever a reader wants the other type (one Cast per value, type and graph).

Which nodes go to float16 is read from the ONNX schemas: a float32 input or output moves to float16
only where its type constraint admits `tensor(float16)`; a node whose bound constraint does not
(or a fixed `tensor(float)` output) stays float32 whole. Inputs whose constraint binds no output
(Cast's and Shape's input, Resize's roi) take either type, so they get no Cast. Initializers and
Constant-node values become float16 when every reader wants float16 (values beyond ±65504 are
clamped, with a diagnostic naming them; infinities stay infinite); a constant some float32 node
reads stays float32 and float16 readers get a Cast, which ORT folds at load time.

Kept in float32 (the reason is counted in `stats["kept_float"]`):
* `fragile=true` (default): normalisations that take means and variances over many elements
  (Layer/Group/Instance/RMS/Lp normalisation, MeanVarianceNormalization), Softmax / LogSoftmax,
  the pieces that overflow or underflow in float16 (Exp, Log, Pow, Sqrt, Reciprocal, CumSum,
  ReduceLogSumExp / SumSquare / L2 / Prod), ReduceMean / ReduceSum / ReduceL1 over more than
  `REDUCE_LIMIT` elements or an unknown number, and Div by a non-constant (a decomposed
  LayerNorm divides by sqrt(var + eps), where eps = 1e-12 underflows to 0 in float16). Erf, Tanh,
  Sigmoid and Gelu are bounded and stay in float16.
* `block=`: more op types or node names.
* Control-flow nodes (If, Loop, Scan) and everything inside their bodies: subgraphs stay float32
  as a whole, and outer values a body reads are cast back to float32 inside the body.
* Custom-domain ops (including model-local functions) and ops without a schema.

`keep-io=true` keeps graph inputs and outputs float32 (Casts at the boundary); `keep-io=false`
turns every float32 graph input and output into float16.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir

from onnxpress.ir.shapes import infer_shapes
from onnxpress.passes.base import Pass, PassResult, Tolerance
from onnxpress.passes.cleanup import _util as u
from onnxpress.passes.manager import PassContext
from onnxpress.passes.registry import register_pass

__all__ = ["DEFAULT_FRAGILE", "REDUCE_LIMIT", "ConvertFp16Pass"]

logger = logging.getLogger(__name__)

F32, F16 = ir.DataType.FLOAT, ir.DataType.FLOAT16
FP16_MAX = float(np.finfo(np.float16).max)

#: Op types kept in float32 by default (see the module docstring).
DEFAULT_FRAGILE = frozenset({
    "LayerNormalization", "GroupNormalization", "InstanceNormalization", "RMSNormalization",
    "LpNormalization", "MeanVarianceNormalization",
    "Softmax", "LogSoftmax",
    "Exp", "Log", "Pow", "Sqrt", "Reciprocal", "CumSum",
    "ReduceLogSumExp", "ReduceSumSquare", "ReduceL2", "ReduceProd",
})
#: Sums / means over more elements than this stay float32 (float16 has an 11-bit significand).
REDUCE_LIMIT = 256
_SUMS = frozenset({"ReduceMean", "ReduceSum", "ReduceL1"})
#: Ops whose output type an attribute sets (besides those with a `to` / `dtype` /
#: `output_datatype` attribute in their schema): their outputs keep their type.
_ATTRIBUTE_TYPED = frozenset({"Cast", "Constant", "ConstantOfShape"})
_TYPE_ATTRIBUTES = frozenset({"to", "dtype", "output_datatype"})
#: Ops whose output type is an optional attribute's, else their input's: simplest left float32.
_OPTIONALLY_TYPED = frozenset({"EyeLike", "RandomNormalLike", "RandomUniformLike", "Bernoulli"})

ANY = None  # a slot that takes float16 or float32 alike


# ----------------------------------------------------------------------------------------------
# Deciding node by node
# ----------------------------------------------------------------------------------------------
def _reduced_elements(node: ir.Node) -> int | None:
    """How many elements one output element of a Reduce* sums, when the shapes say."""
    dims = u.static_dims(node.inputs[0]) if node.inputs else None
    if dims is None:
        return None
    if "axes" in node.attributes:
        axes = u.attr_ints(node, "axes")
    elif len(node.inputs) > 1 and node.inputs[1] is not None:
        array = u.const_array(node.inputs[1])
        if array is None:
            return None
        axes = [int(a) for a in array.reshape(-1)]
    else:
        axes = []
    if not axes:
        if u.attr_int(node, "noop_with_empty_axes", 0):
            return 1
        axes = list(range(len(dims)))
    return int(np.prod([dims[a % len(dims)] for a in axes], dtype=np.int64)) if dims else 1


def _fragile(node: ir.Node) -> str | None:
    if node.op_type in DEFAULT_FRAGILE:
        return f"fragile ({node.op_type})"
    if node.op_type in _SUMS:
        size = _reduced_elements(node)
        if size is None or size > REDUCE_LIMIT:
            return f"fragile ({node.op_type} over {'unknown' if size is None else size} elements)"
    if node.op_type == "Div" and len(node.inputs) > 1 and u.const_array(node.inputs[1]) is None:
        return "fragile (Div by a non-constant)"
    return None


@dataclasses.dataclass
class _Plan:
    """What one float16 node wants: per input slot F16 / F32 / ANY, and which outputs turn F16."""

    inputs: dict[int, ir.DataType | None]
    outputs: list[int]


def _is_float32(value: ir.Value | None) -> bool:
    """A float32 tensor (sequences and optionals of float32 are left as they are)."""
    return value is not None and isinstance(value.type, ir.TensorType) and value.dtype == F32


def _float_slots(values: Any) -> list[int]:
    return [i for i, v in enumerate(values) if _is_float32(v)]


def _param(params: list[Any], index: int) -> Any:
    if index < len(params):
        return params[index]
    last = params[-1] if params else None
    variadic = onnx.defs.OpSchema.FormalParameterOption.Variadic
    return last if last is not None and last.option == variadic else None


def _schema_plan(node: ir.Node, opset: int) -> _Plan | str:
    """The slots that change when `node` runs in float16, or why it cannot."""
    try:
        schema = onnx.defs.get_schema(node.op_type, opset, "")
    except onnx.defs.SchemaError:
        return "no schema"
    constraints = {c.type_param_str: set(c.allowed_type_strs) for c in schema.type_constraints}
    if node.op_type in _OPTIONALLY_TYPED:
        return "output type set by an optional attribute"
    attribute_typed = node.op_type in _ATTRIBUTE_TYPED or bool(_TYPE_ATTRIBUTES & set(schema.attributes))
    bound = {p.type_str for p in schema.outputs if p.type_str in constraints}
    # a constraint that several inputs share must give them one type, even if no output uses it
    slots = Counter(getattr(_param(list(schema.inputs), i), "type_str", None) for i in range(len(node.inputs))
                    if node.inputs[i] is not None)
    bound |= {name for name, count in slots.items() if count > 1 and name in constraints}
    inputs: dict[int, ir.DataType | None] = {}
    for i in _float_slots(node.inputs):
        param = _param(list(schema.inputs), i)
        if param is None:
            return "inputs do not match the schema"
        if param.type_str not in constraints:  # a fixed type, tensor(float) or seq(...)
            inputs[i] = F32
        elif "tensor(float16)" not in constraints[param.type_str]:
            if param.type_str in bound:
                return "no float16 in the schema"
            inputs[i] = F32
        else:
            inputs[i] = F16 if param.type_str in bound and not attribute_typed else ANY
    outputs = []
    if not attribute_typed:
        for i in _float_slots(node.outputs):
            param = _param(list(schema.outputs), i)
            if param is None or param.type_str not in constraints:
                return "float32 output fixed by the schema"
            if "tensor(float16)" not in constraints[param.type_str]:
                return "no float16 in the schema"
            outputs.append(i)
    return _Plan(inputs, outputs)


# ----------------------------------------------------------------------------------------------
# The pass
# ----------------------------------------------------------------------------------------------
@register_pass
class ConvertFp16Pass(Pass):
    """float32 -> float16 for weights and compute, with Casts at the float32 islands.

    Stats: `nodes_converted`, `kept_float` (count per reason), `casts_inserted`,
    `initializers_converted`, `bytes_before` / `bytes_after` of the converted constants, `clamped`
    (constant elements beyond the float16 range).
    """

    name = "convert-fp16"
    tolerance = Tolerance(rtol=1e-2, atol=1e-3, min_cosine=0.99)

    @dataclasses.dataclass(frozen=True)
    class Options:
        keep_io: bool = True
        fragile: bool = True
        block: tuple[str, ...] = ()

    def run(self, model: ir.Model, am: Any) -> PassResult:
        graph = model.graph
        inferred = any(v.type is None for node in graph for v in node.outputs) and infer_shapes(model)
        opset = u.default_opset(model)
        kept: Counter[str] = Counter()
        plans: dict[int, _Plan] = {}
        for node in graph:
            reason = self._keep_reason(node)
            plan = _schema_plan(node, opset) if reason is None else reason
            if isinstance(plan, str):
                if _float_slots(node.inputs) or _float_slots(node.outputs):
                    kept[plan if reason is None else reason] += 1
                    logger.debug("%s: %s '%s' stays float32: %s", self.name, node.op_type, node.name, plan)
                continue
            plans[id(node)] = plan

        home = self._home_types(model, plans)
        if not any(t == F16 for t in home.values()):
            return PassResult(model, inferred, {"nodes_converted": 0, "kept_float": dict(kept)})
        names = u.NameScope(model)
        stats = self._convert_constants(model, home)
        for value, dtype in home.values_items():
            if dtype == F16 and value.const_value is None and value.type is not None:
                value.type = ir.TensorType(F16)
                producer = value.producer()
                if producer is not None and producer.op_type == "Cast":
                    producer.attributes["to"] = ir.AttrInt64("to", F16.value)
        casts = self._insert_casts(model, plans, home, names)
        casts += self._fix_graph_io(model, home, names)
        converted = sum(1 for node in graph if id(node) in plans and
                        (plans[id(node)].outputs or any(t == F16 for t in plans[id(node)].inputs.values())))
        stats.update({"nodes_converted": converted, "kept_float": dict(kept), "casts_inserted": casts})
        logger.info("%s: %d nodes in float16, %d kept float32, %d casts", self.name, converted,
                    sum(kept.values()), casts)
        return PassResult(model, True, stats)

    def _keep_reason(self, node: ir.Node) -> str | None:
        if node.op_type in self.options.block or (node.name and node.name in self.options.block):
            return "blocked"
        if not u.is_onnx_op(node, node.op_type):
            return "custom domain"
        if any(a.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS) for a in node.attributes.values()):
            return "control flow"
        if u.has_ref_attrs(node):
            return "function attribute references"
        return _fragile(node) if self.options.fragile else None

    # -- home types ----------------------------------------------------------------------------
    def _home_types(self, model: ir.Model, plans: dict[int, _Plan]) -> "_Homes":
        """Every float32 value of the main graph with the type it will carry."""
        graph = model.graph
        homes = _Homes()
        for value in graph.inputs:
            if _is_float32(value):  # an overridable initializer keeps its float32 data
                homes.set(value, F32 if self.options.keep_io or value.const_value is not None else F16)
        for node in graph:
            plan = plans.get(id(node))
            for i in _float_slots(node.outputs):
                homes.set(node.outputs[i], F16 if plan is not None and i in plan.outputs else F32)
        constants = [v for v in graph.initializers.values() if not v.is_graph_input() and _is_float32(v)]
        constants += [node.outputs[0] for node in graph if node.op_type == "Constant" and node.domain in ("", "ai.onnx")
                      and _is_float32(node.outputs[0]) and "value" in node.attributes]
        # Cast(to=float) whose readers all want float16 can cast to float16 directly
        constants += [node.outputs[0] for node in graph if id(node) in plans and node.op_type == "Cast"
                      and _is_float32(node.outputs[0])]
        for value in constants:
            wants = {_wanted(use.node, use.idx, graph, plans) for use in value.uses()}
            homes.set(value, F16 if F16 in wants and wants <= {F16, ANY} and not value.is_graph_output() else F32)
        return homes

    # -- rewriting -----------------------------------------------------------------------------
    def _convert_constants(self, model: ir.Model, homes: "_Homes") -> dict[str, Any]:
        converted = bytes_before = bytes_after = clamped = 0
        clamped_names = []
        for value, dtype in homes.values_items():
            if dtype != F16:
                continue
            producer = value.producer()
            is_constant_node = producer is not None and producer.op_type == "Constant"
            if value.const_value is None and not is_constant_node:
                continue
            array = np.asarray(value.const_value.numpy() if value.const_value is not None
                               else producer.attributes["value"].as_tensor().numpy(), dtype=np.float32)  # type: ignore[union-attr]
            over = np.isfinite(array) & (np.abs(array) > FP16_MAX)
            if over.any():
                clamped += int(over.sum())
                clamped_names.append(value.name or "?")
            half = np.clip(array, -FP16_MAX, FP16_MAX, where=np.isfinite(array), out=array.copy()).astype(np.float16)
            tensor = ir.Tensor(half, name=value.name)
            if is_constant_node:
                producer.attributes["value"] = ir.AttrTensor("value", tensor)  # type: ignore[union-attr]
            else:
                value.const_value = tensor
            value.type = ir.TensorType(F16)
            converted += 1
            bytes_before += array.nbytes
            bytes_after += half.nbytes
        if clamped:
            shown = ", ".join(clamped_names[:5]) + (" ..." if len(clamped_names) > 5 else "")
            PassContext.current().diagnose(
                f"{self.name}: {clamped} constant values beyond ±{FP16_MAX:g} clamped (in {shown})")
        return {"initializers_converted": converted, "bytes_before": bytes_before, "bytes_after": bytes_after,
                "clamped": clamped}

    def _insert_casts(self, model: ir.Model, plans: dict[int, _Plan], homes: "_Homes", names: u.NameScope) -> int:
        graph = model.graph
        made: dict[tuple[int, ir.DataType, int], ir.Value] = {}
        for value, dtype in list(homes.values_items()):
            for use in list(value.uses()):
                wanted = _wanted(use.node, use.idx, graph, plans)
                if wanted is ANY or wanted == dtype:
                    continue
                owner = use.node.graph
                assert isinstance(owner, ir.Graph)
                key = (id(value), wanted, id(owner))
                if key not in made:
                    made[key] = _cast(value, wanted, owner, graph, names)
                use.node.replace_input_with(use.idx, made[key])
        return len(made)

    def _fix_graph_io(self, model: ir.Model, homes: "_Homes", names: u.NameScope) -> int:
        """Graph outputs get the io type: a Cast takes over the output's name where needed."""
        graph = model.graph
        target = F32 if self.options.keep_io else F16
        casts = 0
        for i, value in enumerate(list(graph.outputs)):
            home = homes.get(value)
            if home is None or home == target or value.is_graph_input() or value.const_value is not None:
                continue
            name = value.name
            value.name = names.fresh(f"{name}_{'fp16' if home == F16 else 'fp32'}")
            out = _cast(value, target, graph, graph, names)
            out.name = name
            graph.outputs[i] = out
            casts += 1
        return casts


class _Homes:
    """value -> home type, keyed by identity (values are not hashable by content)."""

    def __init__(self) -> None:
        self._map: dict[int, tuple[ir.Value, ir.DataType]] = {}

    def set(self, value: ir.Value, dtype: ir.DataType) -> None:
        self._map[id(value)] = (value, dtype)

    def get(self, value: ir.Value) -> ir.DataType | None:
        entry = self._map.get(id(value))
        return None if entry is None else entry[1]

    def values(self) -> list[ir.DataType]:
        return [dtype for _, dtype in self._map.values()]

    def values_items(self) -> list[tuple[ir.Value, ir.DataType]]:
        return list(self._map.values())


def _wanted(node: ir.Node, index: int, graph: ir.Graph, plans: dict[int, _Plan]) -> ir.DataType | None:
    """The type `node` wants at input `index` for a float32 value: nodes in subgraphs and kept
    nodes want float32; float16 nodes as their plan says."""
    if node.graph is not graph:
        return F32
    plan = plans.get(id(node))
    if plan is None:
        return F32
    return plan.inputs.get(index, F32)


def _cast(value: ir.Value, to: ir.DataType, owner: ir.Graph, main: ir.Graph, names: u.NameScope) -> ir.Value:
    """A Cast of `value` to `to` placed in `owner`: right after the value's producer when it is
    in the same graph, else first in the graph (outer values and constants exist from the start)."""
    out = ir.Value(name=names.fresh(f"{value.name or 'value'}_{'fp16' if to == F16 else 'fp32'}"),
                   type=ir.TensorType(to), shape=value.shape)
    cast = ir.Node("", "Cast", [value], attributes=[ir.AttrInt64("to", to.value)], outputs=[out],
                   name=names.fresh(f"{value.name or 'value'}_Cast"))
    producer = value.producer()
    if producer is not None and producer.graph is owner:
        owner.insert_after(producer, cast)
    else:
        first = next(iter(owner), None)
        if first is None:
            owner.append(cast)
        else:
            owner.insert_before(first, cast)
    return out

"""QuantizeQdqPass: static post-training quantization in QDQ form, placed where the target fuses it.

`quantize-qdq{activations=uint8 weights=int8 per-channel=true symmetric-activations=false
symmetric-weights=true calibration=percentile percentile=99.999 exclude= bias=int32 force=false
range-ratio=100 max-samples=64 upgrade-opset=true}`

Steps: refuse models that are already quantized (unless `force`); list the nodes the backend's
`Capabilities.qdq_ops` could run quantized (`placement.candidates`); make sure the opset can
express what is asked (per-channel needs 13, 16-bit needs 21: upgrade with onnx's version converter
when that is safe, else per-tensor / com.microsoft Q/DQ, with a diagnostic); calibrate the tensors
that would set scales (`calibration.calibrate`, streaming); decide placement from the ranges
(`placement.place`); compute every scale and integer tensor; only then edit the model:

* activations: `T -> QuantizeLinear -> DequantizeLinear -> readers` (every reader, float ones
  too, so that the producer's only consumer is Q and ORT can fuse it); a graph output keeps its
  name on the DQ output;
* weights: an integer initializer + DequantizeLinear (per-channel on the op's output-channel axis),
  quantized once per constant however many nodes read it (tied weights stay consistent);
* biases of Conv / ConvTranspose / Gemm: int32 with scale s_x · s_w and zero point 0.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections import Counter
from typing import Any

import numpy as np
import onnx_ir as ir

from onnxpress.ir import ops
from onnxpress.ir.io import weight_bytes
from onnxpress.ir.shapes import infer_shapes
from onnxpress.passes.base import Pass, PassResult, Tolerance
from onnxpress.passes.cleanup import _util as u
from onnxpress.passes.manager import PassContext
from onnxpress.passes.quantize import placement as pl
from onnxpress.passes.quantize import quant_math as qm
from onnxpress.passes.quantize.calibration import calibrate
from onnxpress.passes.registry import register_pass

__all__ = ["QuantizeQdqPass"]

logger = logging.getLogger(__name__)

ACTIVATION_TYPES = ("uint8", "int8", "uint16", "int16")
WEIGHT_TYPES = ("int8", "uint8")
CALIBRATION_METHODS = ("percentile", "minmax", "entropy")
BIAS_MODES = ("int32", "float")

#: Opsets: QuantizeLinear exists from 10, `axis` (per-channel) from 13, 16-bit types from 21.
OPSET_QDQ, OPSET_PER_CHANNEL, OPSET_16BIT = 10, 13, 21
#: The IR version each of those opsets needs at least.
_IR_FOR_OPSET = {OPSET_PER_CHANNEL: 7, OPSET_16BIT: 10}
#: Models above this many weight bytes are not round-tripped through onnx's version converter.
_UPGRADE_MAX_BYTES = 1 << 30
_MS_DOMAIN = "com.microsoft"
#: ops of ORT's contrib domain that mean "already quantized"
_QUANTIZED_CONTRIB = frozenset({"MatMulNBits", "MatMulIntegerToFloat", "DynamicQuantizeMatMul", "QGemm", "QAttention"})


@register_pass
class QuantizeQdqPass(Pass):
    """Insert QuantizeLinear / DequantizeLinear pairs that the target backend fuses into int kernels.

    Applies to float32 tensors of the main graph and of subgraphs whose values were calibrated (the
    calibration cannot see inside If / Loop bodies today: those stay float and the stats say so).
    Leaves alone, with a diagnostic and `modified=False`: models that already contain Q/DQ or
    quantized ops (`force=true` to go ahead), contexts without a runner or data, and models whose
    opset predates QuantizeLinear and cannot be upgraded. Lossy: the numeric check compares by
    cosine.
    """

    name = "quantize-qdq"
    tolerance = Tolerance(min_cosine=0.98)

    @dataclasses.dataclass(frozen=True)
    class Options:
        activations: str = "uint8"
        weights: str = "int8"
        per_channel: bool = True
        symmetric_activations: bool = False
        symmetric_weights: bool = True
        calibration: str = "percentile"
        percentile: float = 99.999
        exclude: tuple[str, ...] = ()
        bias: str = "int32"
        force: bool = False
        range_ratio: float = 100.0
        max_samples: int | None = 64
        upgrade_opset: bool = True

        def __post_init__(self) -> None:
            for key, value, allowed in (
                ("activations", self.activations, ACTIVATION_TYPES),
                ("weights", self.weights, WEIGHT_TYPES),
                ("calibration", self.calibration, CALIBRATION_METHODS),
                ("bias", self.bias, BIAS_MODES),
            ):
                if value not in allowed:
                    raise ValueError(f"{key}={value!r}; expected one of {', '.join(allowed)}")
            if not 0.0 < self.percentile <= 100.0:
                raise ValueError(f"percentile must be in (0, 100], got {self.percentile}")
            if self.range_ratio <= 1.0:
                raise ValueError(f"range-ratio must be above 1, got {self.range_ratio}")
            if self.max_samples is not None and self.max_samples < 1:
                raise ValueError("max-samples must be at least 1 (or none for all data)")
            object.__setattr__(self, "exclude", tuple(self.exclude))
            for pattern in self.exclude:
                if pattern.startswith("re:"):
                    try:
                        re.compile(pattern[3:])
                    except re.error as e:
                        raise ValueError(f"exclude pattern {pattern!r} is not a valid regex: {e}") from None

    # ------------------------------------------------------------------------------------------
    def run(self, model: ir.Model, am: Any) -> PassResult:
        opts = self.options
        ctx = PassContext.current()
        caps = ctx.capabilities
        stats: dict[str, Any] = {}

        existing = _quantized_nodes(model)
        if existing and not opts.force:
            ctx.diagnose(f"quantize-qdq: the model already contains {existing} quantization node(s) "
                         "(QuantizeLinear / DequantizeLinear / QLinear*); left alone (force=true to quantize anyway)")
            return PassResult(model, False, {"skipped": "already quantized"})
        if ctx.runner is None or not ctx.feeds(1):
            ctx.diagnose("quantize-qdq: no runner or no calibration data in the context; nothing quantized")
            return PassResult(model, False, {"skipped": "no calibration data"})

        excluded = pl.exclusion_matcher(opts.exclude)
        qdq_ops = caps.qdq_ops if caps is not None else frozenset(pl.RULES)
        if not any(not excluded(n) for n, _ in pl.candidates(model, qdq_ops)):
            return PassResult(model, False, {"skipped": "no quantizable ops"})

        bytes_before = weight_bytes(model)
        setup = self._prepare_opset(model, ctx, stats)
        if setup is None:
            return PassResult(model, bool(stats.get("opset")), stats)
        per_channel, domain = setup
        infer_shapes(model)

        cands = pl.candidates(model, qdq_ops)
        names = pl.tensors_to_calibrate(model, cands, excluded)
        ranges = calibrate(model, ctx, names, method=opts.calibration, percentile=opts.percentile,
                           limit=opts.max_samples, cache_dir=ctx.config.get("calibration_cache_dir"))
        float_bias = opts.bias == "float" or bool(caps is not None and caps.float_bias)
        plan = pl.place(model, cands, ranges, excluded, range_ratio=opts.range_ratio,
                        per_channel=per_channel, quantize_bias=not float_bias)
        symmetric_acts = opts.symmetric_activations or bool(caps is not None and caps.symmetric_activations_only)
        built = _Builder(model, plan, opts, symmetric_acts, domain).build()
        built.apply()

        stats.update(
            ops_quantized=pl.count_by_type(plan.nodes),
            scale_shared_ops=pl.count_by_type(plan.shared_nodes),
            activations_folded=pl.count_by_type(plan.folded),
            kept_float=dict(Counter(plan.kept_float.values())),
            kept_float_nodes=dict(list(plan.kept_float.items())[:50]),
            tensors_kept_float=dict(list(plan.tensors_kept_float.items())[:50]),
            tensors_calibrated=len(ranges),
            activation_scales=len(plan.tensors),
            scales=built.scales,
            weights_quantized=len(built.weights),
            tied_weights=sum(len(w.users) > 1 for w in plan.weights.values()),
            biases_quantized=built.biases,
            biases_kept_float=built.biases_float,
            per_channel=per_channel,
            symmetric_activations=symmetric_acts,
            calibration=opts.calibration,
            weight_bytes_before=bytes_before,
            weight_bytes_after=weight_bytes(model),
        )
        stats["size_ratio"] = round(stats["weight_bytes_after"] / max(bytes_before, 1), 4)
        modified = bool(plan.nodes or plan.shared_nodes or stats.get("opset"))
        logger.info("quantize-qdq: %d op(s) quantized %s, %d kept float, weights %d -> %d bytes",
                    len(plan.nodes), stats["ops_quantized"], len(plan.kept_float),
                    bytes_before, stats["weight_bytes_after"])
        return PassResult(model, modified, stats)

    # ------------------------------------------------------------------------------------------
    def _prepare_opset(self, model: ir.Model, ctx: PassContext, stats: dict[str, Any]) -> tuple[bool, str] | None:
        """(per_channel, Q/DQ domain) the model's opset allows, upgrading it where asked and safe.

        None when the model cannot hold QuantizeLinear at all."""
        opts = self.options
        sixteen = qm.quant_type(opts.activations).bits == 16
        opset = u.default_opset(model)
        wanted = OPSET_16BIT if sixteen else OPSET_PER_CHANNEL if opts.per_channel else OPSET_QDQ
        if opset < wanted and opts.upgrade_opset:
            problem = upgrade_opset(model, wanted)
            if problem is None:
                stats["opset"] = f"{opset}->{wanted}"
                logger.info("quantize-qdq: opset upgraded %d -> %d", opset, wanted)
                opset = wanted
            else:
                ctx.diagnose(f"quantize-qdq: could not upgrade opset {opset} to {wanted} ({problem})")
        if opset < OPSET_QDQ:
            ctx.diagnose(f"quantize-qdq: opset {opset} has no QuantizeLinear; nothing quantized")
            return None
        per_channel = opts.per_channel
        if per_channel and opset < OPSET_PER_CHANNEL:
            ctx.diagnose(f"quantize-qdq: opset {opset} < 13 has no per-channel DequantizeLinear; "
                         "weights quantized per tensor")
            per_channel = False
        domain = ""
        if sixteen and opset < OPSET_16BIT:
            ctx.diagnose(f"quantize-qdq: opset {opset} < 21 has no 16-bit QuantizeLinear; "
                         "using ONNX Runtime's com.microsoft QuantizeLinear / DequantizeLinear")
            domain = _MS_DOMAIN
            model.opset_imports.setdefault(_MS_DOMAIN, 1)
        return per_channel, domain


# ----------------------------------------------------------------------------------------------
# Opset
# ----------------------------------------------------------------------------------------------
def upgrade_opset(model: ir.Model, target: int) -> str | None:
    """Convert `model` in place to default-domain opset `target`; the reason it was not, or None.

    Safe only for models without local functions and under 1 GiB of weights (the converter works
    on a serialized copy). Initializers keep their original (possibly memory-mapped) tensors."""
    import onnx
    import onnx.version_converter

    if model.functions:
        return "the model has local functions"
    if weight_bytes(model) > _UPGRADE_MAX_BYTES:
        return "the model is too large to convert in memory"
    try:
        proto = ir.serde.serialize_model(model)
        converted = onnx.version_converter.convert_version(proto, target)
        converted.ir_version = max(converted.ir_version, _IR_FOR_OPSET.get(target, 7))
        onnx.checker.check_model(converted)
        new = ir.serde.deserialize_model(converted)
    except Exception as e:  # the converter and checker raise many types for ops they cannot map
        return f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
    old = model.graph.initializers
    for name, value in new.graph.initializers.items():
        before = old.get(name)
        if before is not None and before.const_value is not None and before.dtype == value.dtype \
                and before.shape == value.shape:
            value.const_value = before.const_value
    model.graph = new.graph
    model.ir_version = new.ir_version
    return None


def _quantized_nodes(model: ir.Model) -> int:
    count = 0
    for graph in u.all_graphs(model):
        for node in graph:
            if ops.QUANTIZATION in ops.op_metatypes(node.op_type, node.domain) or (
                node.domain == _MS_DOMAIN and (node.op_type.startswith("QLinear") or node.op_type in _QUANTIZED_CONTRIB)
            ):
                count += 1
    return count


# ----------------------------------------------------------------------------------------------
# Building: every number first, then the edits
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass
class _Act:
    value: ir.Value
    scale: np.ndarray
    zero_point: np.ndarray
    source: ir.Value  # whose scale / zero-point initializers to use


@dataclasses.dataclass
class _Weight:
    use: pl.WeightUse
    q: np.ndarray
    scale: np.ndarray
    zero_point: np.ndarray


@dataclasses.dataclass
class _Bias:
    node: ir.Node
    index: int
    q: np.ndarray
    scale: np.ndarray
    axis: int | None


class _Builder:
    """Computes every scale and integer tensor of a plan, then applies them in one go."""

    def __init__(self, model: ir.Model, plan: pl.Plan, opts: Any, symmetric_acts: bool, domain: str) -> None:
        self.model, self.plan, self.opts = model, plan, opts
        self.symmetric_acts, self.domain = symmetric_acts, domain
        self.act_type = qm.quant_type(opts.activations)
        self.weight_type = qm.quant_type(opts.weights)
        self.acts: list[_Act] = []
        self.weights: list[_Weight] = []
        self.bias_list: list[_Bias] = []
        self.biases_float = 0
        self.names = u.NameScope(model)

    @property
    def scales(self) -> int:
        own = sum(a.source is a.value for a in self.acts)
        return own + len(self.weights) + len(self.bias_list)

    @property
    def biases(self) -> int:
        return len(self.bias_list)

    # -- numbers ---------------------------------------------------------------------------
    def build(self) -> "_Builder":
        own: dict[ir.Value, tuple[np.ndarray, np.ndarray]] = {}
        for value, (lo, hi) in self.plan.tensors.items():
            own[value] = qm.compute_scale_zero_point(lo, hi, self.act_type, self.symmetric_acts)
            self.acts.append(_Act(value, *own[value], value))
        for value, root in self.plan.shared.items():
            self.acts.append(_Act(value, *own[root], root))
        weight_scales: dict[ir.Value, np.ndarray] = {}
        for use in self.plan.weights.values():
            w = u.const_array(use.value).astype(np.float32)
            if use.axis is not None:
                scale, zp = qm.per_channel_scales(w, use.axis, self.weight_type, self.opts.symmetric_weights)
            else:
                scale, zp = qm.compute_scale_zero_point(float(w.min(initial=0.0)), float(w.max(initial=0.0)),
                                                        self.weight_type, self.opts.symmetric_weights)
            q = qm.quantize_array(w, scale, zp, self.weight_type, use.axis)
            self.weights.append(_Weight(use, q, scale, zp))
            weight_scales[use.value] = scale
        for node, index, weight, act in self.plan.biases:
            bias = self._bias(node, index, weight_scales[weight], own[self.plan.scale_source(act)][0])
            if bias is None:
                self.biases_float += 1
            else:
                self.bias_list.append(bias)
        return self

    def _bias(self, node: ir.Node, index: int, w_scale: np.ndarray, x_scale: np.ndarray) -> _Bias | None:
        b = u.const_array(node.inputs[index]).astype(np.float32)
        scale = (np.float32(x_scale) * w_scale.astype(np.float32)).astype(np.float32)
        axis = None
        if scale.ndim == 1:
            if b.ndim != 1 or b.shape[0] != scale.shape[0]:
                logger.debug("%s: bias shape %s does not match %d channels; kept float", node.name, b.shape, scale.size)
                return None
            axis = 0
        q = np.rint(b / (scale if axis is not None else scale.reshape(())))
        if np.any(np.abs(q) > qm.quant_type("int32").qmax):
            logger.debug("%s: bias overflows int32 at scale s_x*s_w; kept float", node.name)
            return None
        return _Bias(node, index, q.astype(np.int32), scale, axis)

    # -- edits -----------------------------------------------------------------------------
    def apply(self) -> None:
        initializers: dict[ir.Value, tuple[ir.Value, ir.Value]] = {}
        for act in self.acts:  # roots come before the tensors sharing their scale
            if act.source is act.value:
                graph = _owner(act.value)
                initializers[act.value] = (
                    u.new_initializer(graph, self.names, f"{act.value.name}_scale", act.scale),
                    u.new_initializer(graph, self.names, f"{act.value.name}_zero_point", act.zero_point),
                )
            scale, zp = initializers[act.source]
            self._insert_qdq(act.value, scale, zp)
        for weight in self.weights:
            self._replace_weight(weight)
        for bias in self.bias_list:
            self._replace_bias(bias)

    def _qdq_node(self, op: str, inputs: list[ir.Value], axis: int | None, name: str) -> ir.Node:
        attributes = {"axis": axis} if axis is not None else None
        return ir.node(op, inputs, attributes, domain=self.domain, name=self.names.fresh(name))

    def _insert_qdq(self, value: ir.Value, scale: ir.Value, zp: ir.Value) -> None:
        graph = _owner(value)
        uses = list(value.uses())
        base = value.name
        q = self._qdq_node("QuantizeLinear", [value, scale, zp], None, f"{base}_QuantizeLinear")
        q.outputs[0].name = self.names.fresh(f"{base}_quantized")
        q.outputs[0].type = ir.TensorType(self.act_type.ir)
        q.outputs[0].shape = value.shape
        dq = self._qdq_node("DequantizeLinear", [q.outputs[0], scale, zp], None, f"{base}_DequantizeLinear")
        out = dq.outputs[0]
        out.type, out.shape = value.type, value.shape
        producer = value.producer()
        if producer is not None:
            graph.insert_after(producer, [q, dq])
        elif len(graph):
            graph.insert_before(graph.node(0), [q, dq])
        else:
            graph.extend([q, dq])
        for use in uses:
            use.node.replace_input_with(use.idx, out)
        if value.is_graph_output() and not value.is_graph_input():
            # The graph output keeps its name: it moves to the DQ output, the float tensor is renamed.
            outputs = graph.outputs
            for i, v in enumerate(outputs):
                if v is value:
                    outputs[i] = out
            value.name = self.names.fresh(f"{base}_float")
            out.name = base
        else:
            out.name = self.names.fresh(f"{base}_dequantized")

    def _replace_weight(self, weight: _Weight) -> None:
        value = weight.use.value
        graph = _owner(value)
        base = value.name or "weight"
        q = u.new_initializer(graph, self.names, f"{base}_quantized", weight.q)
        scale = u.new_initializer(graph, self.names, f"{base}_scale", weight.scale)
        zp = u.new_initializer(graph, self.names, f"{base}_zero_point", weight.zero_point)
        dq = ir.node("DequantizeLinear", [q, scale, zp], {"axis": weight.use.axis} if weight.use.axis is not None else None,
                     name=self.names.fresh(f"{base}_DequantizeLinear"))
        out = dq.outputs[0]
        out.name = self.names.fresh(f"{base}_dequantized")
        out.type, out.shape = ir.TensorType(ir.DataType.FLOAT), ir.Shape(weight.q.shape)
        _prepend(graph, dq)
        for use in list(value.uses()):  # every reader, quantized or not: one consistent weight
            use.node.replace_input_with(use.idx, out)
        _drop_constant(value)

    def _replace_bias(self, bias: _Bias) -> None:
        value = bias.node.inputs[bias.index]
        graph = bias.node.graph
        base = value.name or "bias"
        q = u.new_initializer(graph, self.names, f"{base}_quantized", bias.q)
        scale = u.new_initializer(graph, self.names, f"{base}_scale", bias.scale)
        zp = u.new_initializer(graph, self.names, f"{base}_zero_point", np.zeros(bias.scale.shape, np.int32))
        dq = ir.node("DequantizeLinear", [q, scale, zp], {"axis": bias.axis} if bias.axis is not None else None,
                     name=self.names.fresh(f"{base}_DequantizeLinear"))
        out = dq.outputs[0]
        out.name = self.names.fresh(f"{base}_dequantized")
        out.type, out.shape = ir.TensorType(ir.DataType.FLOAT), ir.Shape(bias.q.shape)
        graph.insert_before(bias.node, dq)
        bias.node.replace_input_with(bias.index, out)
        _drop_constant(value)


def _owner(value: ir.Value) -> ir.Graph:
    producer = value.producer()
    graph = producer.graph if producer is not None else value.graph
    assert graph is not None, f"value {value.name} belongs to no graph"
    return graph  # type: ignore[return-value]


def _prepend(graph: ir.Graph, node: ir.Node) -> None:
    if len(graph):
        graph.insert_before(graph.node(0), node)
    else:
        graph.append(node)


def _drop_constant(value: ir.Value) -> None:
    """Remove a float weight nobody reads any more (an initializer or a Constant node)."""
    if value.uses() or value.is_graph_output() or value.is_graph_input():
        return
    producer = value.producer()
    if producer is not None:
        producer.graph.remove(producer, safe=True)
    elif value.is_initializer() and value.graph is not None:
        value.graph.initializers.pop(value.name, None)

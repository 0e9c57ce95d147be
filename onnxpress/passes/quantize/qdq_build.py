"""The edits of quantize-qdq: every scale and integer tensor of a `placement.Plan` first, then the model.

`Builder(model, plan, options, symmetric_activations, domain).build().apply()`:

* activations: `T -> QuantizeLinear -> DequantizeLinear -> readers` (every reader, float ones
  too, so that the producer's only consumer is Q and ORT can fuse it); a graph output keeps its
  name on the DQ output;
* weights: an integer initializer + DequantizeLinear (per-channel on the op's output-channel axis),
  quantized once per constant however many nodes read it (tied weights stay consistent);
* constant operands of Add / Mul and Gather tables: an initializer of the activation type with its
  own per-tensor scale + DequantizeLinear;
* biases of Conv / ConvTranspose / Gemm: int32 with scale s_x · s_w and zero point 0;
* a Conv / ConvTranspose / Gemm that stays float (excluded, kept float by the fallback or the part
  timing) between a DQ and a Q reads its input through a DQ of its own with the scale written per
  axis: ONNX Runtime would otherwise quantize it itself, per tensor (its WeightBiasQuantization).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import numpy as np
import onnx_ir as ir

from onnxpress.passes.cleanup import _util as u
from onnxpress.passes.quantize import placement as pl
from onnxpress.passes.quantize import quant_math as qm

__all__ = ["Builder"]

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class _Act:
    value: ir.Value
    scale: np.ndarray
    zero_point: np.ndarray
    source: ir.Value  # whose scale / zero-point initializers to use


@dataclasses.dataclass
class _Weight:
    value: ir.Value
    axis: int | None
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


class Builder:
    """Computes every scale and integer tensor of a plan, then applies them in one go."""

    def __init__(self, model: ir.Model, plan: pl.Plan, opts: Any, symmetric_acts: bool, domain: str) -> None:
        self.model, self.plan, self.opts = model, plan, opts
        self.symmetric_acts, self.domain = symmetric_acts, domain
        self.act_type = qm.quant_type(opts.activations)
        self.weight_type = qm.quant_type(opts.weights)
        self.acts: list[_Act] = []
        self.weights: list[_Weight] = []
        self.constants: list[_Weight] = []
        self.bias_list: list[_Bias] = []
        self.biases_float = 0
        self.names = u.NameScope(model)

    @property
    def scales(self) -> int:
        own = sum(a.source is a.value for a in self.acts)
        return own + len(self.weights) + len(self.constants) + len(self.bias_list)

    @property
    def biases(self) -> int:
        return len(self.bias_list)

    # -- numbers ---------------------------------------------------------------------------
    def build(self) -> "Builder":
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
            self.weights.append(_Weight(use.value, use.axis, q, scale, zp))
            weight_scales[use.value] = scale
        for value, (lo, hi) in self.plan.constants.items():
            scale, zp = qm.compute_scale_zero_point(lo, hi, self.act_type, self.symmetric_acts)
            q = qm.quantize_array(u.const_array(value).astype(np.float32), scale, zp, self.act_type)
            self.constants.append(_Weight(value, None, q, scale, zp))
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
        for bias_add in self.plan.reassociate:
            _reassociate(bias_add)
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
        for weight in (*self.weights, *self.constants):
            self._replace_weight(weight)
        for bias in self.bias_list:
            self._replace_bias(bias)
        if u.default_opset(self.model) >= _OPSET_PER_AXIS:
            quantized = set(self.plan.nodes)
            for graph in self.model.graphs():
                for node in list(graph):
                    if node not in quantized and _ort_would_quantize(node):
                        self._keep_float_at_runtime(node)

    def _keep_float_at_runtime(self, node: ir.Node) -> None:
        """Read a float Conv / ConvTranspose / Gemm's input through a DequantizeLinear of its own
        whose per-tensor scale is written per axis (all entries equal; the same numbers), so that
        ONNX Runtime's WeightBiasQuantization, which takes only a per-tensor input DQ, leaves it
        float. Left alone where the input's axis lengths are not static."""
        x = node.inputs[0]
        dq = x.producer()
        dims = list(x.shape) if x.shape is not None else []
        axis = next((i for i in (1, 0) if i < len(dims) and isinstance(dims[i], int)), None)
        if axis is None:
            logger.debug("%s: stays float, but ORT may quantize it (input dims not static)", node.name)
            return
        scale, zp = (u.const_array(v) for v in dq.inputs[1:3])
        n = dims[axis]
        graph = node.graph
        name = f"{node.name or node.op_type}_input"
        inputs = [dq.inputs[0],
                  u.new_initializer(graph, self.names, f"{name}_scale", np.full(n, scale.reshape(()), scale.dtype)),
                  u.new_initializer(graph, self.names, f"{name}_zero_point", np.full(n, zp.reshape(()), zp.dtype))]
        own = ir.node("DequantizeLinear", inputs, {"axis": axis}, domain=dq.domain,
                      name=self.names.fresh(f"{name}_DequantizeLinear"))
        own.outputs[0].name = self.names.fresh(f"{name}_dequantized")
        own.outputs[0].type, own.outputs[0].shape = x.type, x.shape
        graph.insert_before(node, own)
        node.replace_input_with(0, own.outputs[0])

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
        value = weight.value
        graph = _owner(value)
        base = value.name or "weight"
        q = u.new_initializer(graph, self.names, f"{base}_quantized", weight.q)
        scale = u.new_initializer(graph, self.names, f"{base}_scale", weight.scale)
        zp = u.new_initializer(graph, self.names, f"{base}_zero_point", weight.zero_point)
        dq = ir.node("DequantizeLinear", [q, scale, zp], {"axis": weight.axis} if weight.axis is not None else None,
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


#: Per-axis DequantizeLinear exists from opset 13.
_OPSET_PER_AXIS = 13
#: The ops ONNX Runtime's WeightBiasQuantization quantizes itself between a DQ and a Q.
_WEIGHT_BIAS_QUANTIZED = ("Conv", "ConvTranspose", "Gemm")


def _ort_would_quantize(node: ir.Node) -> bool:
    """Whether ONNX Runtime (1.20+, graph optimizations on) turns this float node into an integer
    kernel with int8 per-tensor weights of its own making: a Conv / ConvTranspose / Gemm whose input
    comes from a per-tensor DequantizeLinear, whose weight is a float constant, and whose output
    reaches a QuantizeLinear without branching (through Relu / Clip at most) — the conditions of
    its WeightBiasQuantization transformer."""
    if not u.is_onnx_op(node, *_WEIGHT_BIAS_QUANTIZED) or len(node.inputs) < 2 or node.inputs[0] is None:
        return False
    dq = node.inputs[0].producer()
    if dq is None or dq.op_type != "DequantizeLinear" or len(dq.inputs) < 3 or dq.inputs[2] is None:
        return False
    scale, zp = u.const_array(dq.inputs[1]), u.const_array(dq.inputs[2])
    if scale is None or zp is None or scale.size != 1:
        return False
    # A weight read through a DQ (tied with a quantized reader) makes it a plain QDQ group that ORT
    # fuses anyway, and a per-axis input DQ there is not what its QLinear kernels accept: only
    # float constant weights are guarded.
    if node.inputs[1] is None or u.const_array(node.inputs[1]) is None:
        return False
    current = node
    while True:
        if len(current.outputs) != 1 or current.outputs[0].is_graph_output():
            return False
        uses = list(current.outputs[0].uses())
        if len(uses) != 1:
            return False
        consumer = uses[0].node
        if consumer.op_type == "QuantizeLinear":
            return True
        if not u.is_onnx_op(consumer, "Relu", "Clip"):
            return False
        current = consumer


def _reassociate(bias_add: ir.Node) -> None:
    """`R = (m + b) + r` -> `R = (m + r) + b`, in place: A = Add(m, b) becomes Add(m, r), R reads b.

    Float rounding differs only in the order of the two sums; R's output value is unchanged."""
    (use,) = list(bias_add.outputs[0].uses())
    residual = use.node
    b_index = next(i for i, v in enumerate(bias_add.inputs) if v is not None and u.const_array(v) is not None)
    r_index = 1 - use.idx
    b, r = bias_add.inputs[b_index], residual.inputs[r_index]
    bias_add.replace_input_with(b_index, r)
    residual.replace_input_with(r_index, b)


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

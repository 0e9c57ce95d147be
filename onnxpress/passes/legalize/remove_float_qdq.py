"""`remove-float-qdq`: strip QuantizeLinear / DequantizeLinear around ops the target runs in float.

A Q -> DQ pair on an activation only pays where the target fuses it into an integer kernel: the op
reading the DQ output is one of `Capabilities.qdq_ops`, or (on targets whose kernels consume a
quantized output, `Capabilities.output_qdq`: QLinearConv on the CPU EP) the op producing the Q
input is, possibly through a folded Relu / Clip. Anywhere else the pair is a rounding step and two
kernel launches: a pre-quantized model moved to the CUDA EP, an asymmetric Softmax that TensorRT
rejects (onnxruntime#14626), the output Q/DQ that TensorRT's explicit quantization does not want.
Such a pair is removed and its readers read the float tensor again (a graph output keeps its name).
Data movement (Reshape, Transpose, ...) counts as quantized only while its own output is still
quantized, so pairs are visited from the outputs back.

A constant weight behind a DequantizeLinear whose readers all run in float becomes a float
initializer again (per-tensor and per-axis; blocked DequantizeLinear is left alone).

Without capabilities in the context (no target), nothing is removed. Lossy in the good direction:
outputs move towards the float model by at most the removed rounding.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import onnx_ir as ir

from onnxpress.passes.base import Pass, PassResult, Tolerance
from onnxpress.passes.cleanup import _util as u
from onnxpress.passes.manager import PassContext
from onnxpress.passes.quantize import quant_math as qm
from onnxpress.passes.quantize.placement import FOLDABLE, RULES
from onnxpress.passes.registry import register_pass

__all__ = ["RemoveFloatQdqPass"]

logger = logging.getLogger(__name__)

_QDQ_DOMAINS = ("", "ai.onnx", "com.microsoft")


def _is(node: ir.Node | None, op: str) -> bool:
    return node is not None and node.op_type == op and node.domain in _QDQ_DOMAINS


def _is_mover(op_type: str) -> bool:
    rule = RULES.get(op_type)
    return rule is not None and rule.shares_scale


class _Target:
    """Which nodes the target runs on integer data."""

    def __init__(self, qdq_ops: frozenset[str], output_qdq: bool) -> None:
        self.qdq_ops, self.output_qdq = qdq_ops, output_qdq

    def reads_quantized(self, node: ir.Node) -> bool:
        if not u.is_onnx_op(node, *self.qdq_ops):
            return False
        if not _is_mover(node.op_type):
            return True
        # data movement stays integer only while something re-quantizes its output
        return any(_is(use.node, "QuantizeLinear") for out in node.outputs for use in out.uses())

    def writes_quantized(self, value: ir.Value) -> bool:
        if not self.output_qdq:
            return False
        producer = value.producer()
        if producer is not None and u.is_onnx_op(producer, *FOLDABLE) and producer.inputs:
            producer = producer.inputs[0].producer() if producer.inputs[0] is not None else None
        return producer is not None and u.is_onnx_op(producer, *self.qdq_ops) and not _is_mover(producer.op_type)


@register_pass
class RemoveFloatQdqPass(Pass):
    """Remove Q/DQ pairs (and weight DQs) that no integer kernel of the target consumes."""

    name = "remove-float-qdq"
    tolerance = Tolerance(min_cosine=0.98)

    def run(self, model: ir.Model, am: Any) -> PassResult:
        caps = PassContext.current().capabilities
        if caps is None:
            return PassResult(model, False, {"skipped": "no target capabilities"})
        target = _Target(frozenset(caps.qdq_ops), bool(getattr(caps, "output_qdq", True)))
        pairs = weights = 0
        names = u.NameScope(model)
        for graph in model.graphs():
            for node in reversed(list(graph)):
                if node.graph is None:  # removed on the way
                    continue
                if _is(node, "QuantizeLinear"):
                    pairs += self._strip_pair(graph, node, target)
                elif _is(node, "DequantizeLinear"):
                    weights += self._fold_weight(graph, node, target, names)
        if pairs or weights:
            logger.info("remove-float-qdq: %d activation Q/DQ pair(s), %d weight DQ(s) removed", pairs, weights)
        return PassResult(model, bool(pairs or weights), {"pairs_removed": pairs, "weights_dequantized": weights})

    # ------------------------------------------------------------------------------------------
    def _strip_pair(self, graph: ir.Graph, q: ir.Node, target: _Target) -> int:
        source = q.inputs[0] if q.inputs else None
        if source is None or u.const_array(source) is not None or q.outputs[0].is_graph_output():
            return 0
        dqs = [use.node for use in q.outputs[0].uses()]
        if not dqs or not all(_is(dq, "DequantizeLinear") and dq.graph is graph for dq in dqs):
            return 0
        readers = [use.node for dq in dqs for use in dq.outputs[0].uses()]
        if any(target.reads_quantized(r) for r in readers) or target.writes_quantized(source):
            return 0
        outputs = [dq.outputs[0] for dq in dqs if dq.outputs[0].is_graph_output()]
        if outputs and (len(outputs) > 1 or source.is_graph_input() or source.is_graph_output()
                        or source.is_initializer()):
            return 0  # the float tensor cannot take the output's name
        constants = [v for n in (q, *dqs) for v in n.inputs[1:] if v is not None]
        for dq in dqs:
            out = dq.outputs[0]
            name = out.name
            ir.convenience.replace_all_uses_with(out, source, replace_graph_outputs=True)
            graph.remove(dq, safe=True)
            if out in outputs:
                source.name = name
        graph.remove(q, safe=True)
        _drop_unused(graph, constants)
        logger.debug("removed Q/DQ on %s", source.name)
        return 1

    def _fold_weight(self, graph: ir.Graph, dq: ir.Node, target: _Target, names: u.NameScope) -> int:
        q_value = dq.inputs[0]
        array = u.const_array(q_value)
        if array is None or "block_size" in dq.attributes and u.attr_int(dq, "block_size", 0):
            return 0
        out = dq.outputs[0]
        if out.is_graph_output() or not out.uses():
            return 0
        if any(target.reads_quantized(use.node) for use in out.uses()):
            return 0
        scale = u.const_array(dq.inputs[1]) if len(dq.inputs) > 1 else None
        if scale is None:
            return 0
        zp_value = dq.inputs[2] if len(dq.inputs) > 2 else None
        zero_point = u.const_array(zp_value) if zp_value is not None else np.zeros_like(scale, dtype=np.int64)
        if zero_point is None:
            return 0
        axis = None
        if scale.ndim == 1 and scale.size > 1:
            axis = u.attr_int(dq, "axis", 1) % array.ndim
        values = qm.dequantize_array(array, scale, zero_point, axis).astype(scale.dtype)
        name = out.name or "weight"
        constants = [v for v in dq.inputs if v is not None]
        replacement = u.new_initializer(graph, names, f"{name}_float", values)
        ir.convenience.replace_all_uses_with(out, replacement)
        graph.remove(dq, safe=True)
        _drop_unused(graph, constants)
        return 1


def _drop_unused(graph: ir.Graph, values: list[ir.Value]) -> None:
    for value in values:
        if value.uses() or value.is_graph_output() or value.is_graph_input():
            continue
        if value.is_initializer() and value.graph is not None:
            value.graph.initializers.pop(value.name, None)
        else:
            producer = value.producer()
            if producer is not None and all(not o.uses() and not o.is_graph_output() for o in producer.outputs):
                producer.graph.remove(producer, safe=True)

"""QuantizeDynamicPass: int8 weights, activations quantized at run time (no calibration data).

`quantize-dynamic{per-channel=true weights=int8 format=ops gemm=true exclude=}` rewrites every
`MatMul(x, W)` with a constant float32 [K, N] weight (and `Gemm(x, B, C)` with a constant B and no
transA) into

    x -> DynamicQuantizeLinear -> (x_q uint8, x_scale, x_zero_point)
    MatMulInteger(x_q, W_q, x_zero_point[, W_zero_point]) -> Cast(float) -> Mul(x_scale · W_scale)

with W_q int8 symmetric (or uint8 asymmetric) per output column or per tensor (`quant_math`'s
conventions). ONNX Runtime's CPU EP fuses the chain into `DynamicQuantizeMatMul` /
`MatMulIntegerToFloat`; `format=contrib` emits `com.microsoft.DynamicQuantizeMatMul` directly. One
`DynamicQuantizeLinear` serves every layer reading the same x (Q, K and V of an attention block). A
Gemm's alpha and transB are folded into the weight, `beta·C` becomes an Add after the chain (a
dynamic C only with beta = 1). Float16 inputs, shared weights read by other ops, nodes inside
subgraphs are left alone and counted in `stats["skip_reasons"]`.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from typing import Any

import numpy as np
import onnx_ir as ir

from onnxpress.passes.base import Pass, PassResult, Tolerance
from onnxpress.passes.cleanup import _util as u
from onnxpress.passes.quantize import quant_math as qm
from onnxpress.passes.quantize.weights import MS_DOMAIN, WeightGroup, drop_if_unused, weight_groups
from onnxpress.passes.registry import register_pass

__all__ = ["QuantizeDynamicPass"]

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class _Layer:
    node: ir.Node
    w: np.ndarray  # effective [K, N] float64
    bias: ir.Value | None = None  # Gemm's C
    beta: float = 1.0


def _as_layers(group: WeightGroup) -> list[_Layer] | str:
    """Each reader of the weight with its effective [K, N] matrix, or why they are left alone."""
    if group.kind == "matmul":
        return [_Layer(node, group.array) for node in group.users]
    if len(group.users) != 1:
        return "Gemm weight shared"
    node = group.users[0]
    if u.attr_int(node, "transA", 0):
        return "Gemm with transA"
    w = group.array.T if u.attr_int(node, "transB", 0) else group.array
    bias = node.inputs[2] if len(node.inputs) > 2 else None
    beta = u.attr_float(node, "beta", 1.0)
    if bias is not None and u.const_array(bias) is None and beta != 1.0:
        return "Gemm with dynamic C and beta != 1"
    return [_Layer(node, u.attr_float(node, "alpha", 1.0) * w, bias, beta)]


@register_pass
class QuantizeDynamicPass(Pass):
    """Dynamic (run-time) activation quantization of MatMul / Gemm with int8 weights.

    Stats: `layers_quantized`, `gemm_quantized`, `bytes_before` / `bytes_after` of the weights,
    `skip_reasons`.
    """

    name = "quantize-dynamic"
    tolerance = Tolerance(rtol=1e-4, atol=1e-5, min_cosine=0.95)

    @dataclasses.dataclass(frozen=True)
    class Options:
        per_channel: bool = True
        weights: str = "int8"
        format: str = "ops"
        gemm: bool = True
        exclude: tuple[str, ...] = ()

        def __post_init__(self) -> None:
            if self.weights not in ("int8", "uint8"):
                raise ValueError("weights must be int8 or uint8")
            if self.format not in ("ops", "contrib"):
                raise ValueError("format must be ops or contrib")

    def run(self, model: ir.Model, am: Any) -> PassResult:
        opts = self.options
        skipped: Counter[str] = Counter()
        plans: list[tuple[WeightGroup, list[_Layer]]] = []
        for group in weight_groups(model, gemm=opts.gemm, exclude=opts.exclude, skipped=skipped):
            layers = _as_layers(group)
            if isinstance(layers, str):
                skipped[layers] += len(group.users)
                continue
            if group.weight.dtype != ir.DataType.FLOAT:  # x has the weight's type (MatMul/Gemm's T)
                skipped["not float32"] += len(layers)
                continue
            plans.append((group, layers))
        graph = model.graph
        names = u.NameScope(model)
        quantized_x: dict[int, tuple[ir.Value, ir.Value, ir.Value]] = {}
        bytes_before = bytes_after = gemms = 0
        for group, layers in plans:
            weights: dict[int, tuple[ir.Value, ir.Value, ir.Value | None]] = {}
            for layer in layers:
                key = id(layer.w) if group.kind == "matmul" else id(layer.node)
                if key not in weights:
                    weights[key] = self._weight_values(graph, names, group, layer.w)
                    bytes_before += layer.w.size * 4
                    bytes_after += layer.w.size + weights[key][1].const_value.size * 4  # type: ignore[union-attr]
                self._rewrite(model, names, layer, weights[key], quantized_x)
                gemms += layer.node.op_type == "Gemm"
            drop_if_unused(graph, group.weight)
        count = sum(len(layers) for _, layers in plans)
        if count:
            logger.info("%s: %d layers quantized", self.name, count)
        stats = {"layers_quantized": count, "gemm_quantized": gemms, "bytes_before": bytes_before,
                 "bytes_after": bytes_after, "skip_reasons": dict(skipped)}
        return PassResult(model, bool(count), stats)

    # -- pieces --------------------------------------------------------------------------------
    def _weight_values(self, graph: ir.Graph, names: u.NameScope, group: WeightGroup,
                       w: np.ndarray) -> tuple[ir.Value, ir.Value, ir.Value | None]:
        """(W_q, W_scale, W_zero_point or None) initializers for the effective weight."""
        symmetric = self.options.weights == "int8"
        if self.options.per_channel:
            scale, zero_point = qm.per_channel_scales(w, 1, self.options.weights, symmetric)
            codes = qm.quantize_array(w, scale, zero_point, self.options.weights, axis=1)
        else:
            scale, zero_point = qm.compute_scale_zero_point(w.min(), w.max(), self.options.weights, symmetric)
            codes = qm.quantize_array(w, scale, zero_point, self.options.weights)
        base = group.weight.name or "weight"
        q = u.new_initializer(graph, names, f"{base}_quantized", codes)
        s = u.new_initializer(graph, names, f"{base}_scale", np.asarray(scale, dtype=np.float32))
        zp = None if symmetric else u.new_initializer(graph, names, f"{base}_zero_point", np.asarray(zero_point))
        return q, s, zp

    def _quantized_input(self, graph: ir.Graph, names: u.NameScope, node: ir.Node,
                         cache: dict[int, tuple[ir.Value, ir.Value, ir.Value]]) -> tuple[ir.Value, ir.Value, ir.Value]:
        x = node.inputs[0]
        assert x is not None
        if id(x) not in cache:
            base = x.name or node.name or "x"
            outs = [
                ir.Value(name=names.fresh(f"{base}_quantized"), type=ir.TensorType(ir.DataType.UINT8), shape=x.shape),
                ir.Value(name=names.fresh(f"{base}_scale"), type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape([])),
                ir.Value(name=names.fresh(f"{base}_zero_point"), type=ir.TensorType(ir.DataType.UINT8),
                         shape=ir.Shape([])),
            ]
            dq = ir.Node("", "DynamicQuantizeLinear", [x], outputs=outs, name=names.fresh(f"{base}_DynamicQuantize"))
            graph.insert_before(node, dq)
            cache[id(x)] = (outs[0], outs[1], outs[2])
        return cache[id(x)]

    def _rewrite(self, model: ir.Model, names: u.NameScope, layer: _Layer,
                 weight: tuple[ir.Value, ir.Value, ir.Value | None],
                 cache: dict[int, tuple[ir.Value, ir.Value, ir.Value]]) -> None:
        graph = model.graph
        node = layer.node
        out = node.outputs[0]
        base = node.name or out.name or "matmul"
        w_q, w_scale, w_zp = weight
        float_type = ir.TensorType(ir.DataType.FLOAT)
        new_nodes: list[ir.Node] = []

        def value(suffix: str, type_: ir.TypeProtocol = float_type, shape: ir.Shape | None = None) -> ir.Value:
            return ir.Value(name=names.fresh(f"{base}_{suffix}"), type=type_, shape=shape)

        def add(op: str, inputs: list[ir.Value | None], output: ir.Value, domain: str = "", **attrs: Any) -> ir.Value:
            attributes = [ir.AttrInt64(k, v) for k, v in attrs.items()]
            new_nodes.append(ir.Node(domain, op, inputs, attributes=attributes, outputs=[output],
                                     name=names.fresh(f"{base}_{op}")))
            return output

        if self.options.format == "contrib":
            model.opset_imports.setdefault(MS_DOMAIN, 1)
            y = add("DynamicQuantizeMatMul", [node.inputs[0], w_q, w_scale, w_zp], value("dq_matmul", shape=out.shape),
                    domain=MS_DOMAIN)
        else:
            x_q, x_scale, x_zp = self._quantized_input(graph, names, node, cache)
            inputs = [x_q, w_q, x_zp] + ([w_zp] if w_zp is not None else [])
            acc = add("MatMulInteger", inputs, value("int32", ir.TensorType(ir.DataType.INT32), out.shape))
            acc_f = add("Cast", [acc], value("float", shape=out.shape), to=ir.DataType.FLOAT.value)
            scale = add("Mul", [x_scale, w_scale], value("scale", shape=w_scale.shape))
            y = add("Mul", [acc_f, scale], value("dequantized", shape=out.shape))
        if layer.bias is not None:
            bias = layer.bias
            c = u.const_array(bias)
            if c is not None and layer.beta != 1.0:
                bias = u.new_initializer(graph, names, f"{base}_bias", (layer.beta * c).astype(np.float32))
            y = add("Add", [y, bias], value("biased", shape=out.shape))
        ir.convenience.replace_nodes_and_values(graph, node, [node], new_nodes, [out], [y])
        if layer.bias is not None:
            drop_if_unused(graph, layer.bias)

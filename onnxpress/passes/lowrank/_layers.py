"""Which nodes the low-rank passes can decompose, read as plain matrices and kernels.

A `LinearLayer` is a MatMul or Gemm whose weight is a constant 2-D tensor used by that node alone,
seen as `y = x · W_eff (+ bias)` with `W_eff` [K, N] (Gemm's `alpha` and `transB` folded in); a
`ConvLayer` is a 2-D Conv with a constant 4-D kernel used by that node alone. `match_linear` and
`match_conv` return the layer, or a short reason why it cannot be decomposed (the passes count the
reasons in their stats and log them at debug level). Only nodes of the main graph are candidates:
subgraph bodies and functions are left alone.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter

import numpy as np
import onnx_ir as ir

from onnxpress.passes.cleanup import _util as u

logger = logging.getLogger(__name__)

__all__ = [
    "ConvLayer",
    "LinearLayer",
    "conv_attributes",
    "conv_dims",
    "conv_sizes",
    "convs",
    "dims_of",
    "linears",
    "match_conv",
    "match_linear",
]

#: Weight types the factors are computed for (in float64, then cast back).
FLOAT_TYPES = (ir.DataType.FLOAT, ir.DataType.DOUBLE, ir.DataType.FLOAT16)


@dataclasses.dataclass
class LinearLayer:
    """MatMul(x, W) or Gemm(x, B, C) as `x · w_eff` (+ beta·C), w_eff = alpha·op(B) [K, N]."""

    node: ir.Node
    x: ir.Value
    weight: ir.Value
    w_eff: np.ndarray
    bias: ir.Value | None = None  # Gemm's C (a MatMul's bias Add stays where it is)
    beta: float = 1.0
    trans_a: bool = False

    @property
    def shape(self) -> tuple[int, int]:
        return self.w_eff.shape  # type: ignore[return-value]

    @property
    def tokens(self) -> int | None:
        """Rows x holds (product of its dims but the contracted one), None when unknown."""
        dims = u.static_dims(self.x)
        if dims is None:
            return None
        if self.trans_a:
            return dims[1] if len(dims) == 2 else None
        return int(np.prod(dims[:-1], dtype=np.int64)) if dims else None

    def rows(self, x: np.ndarray) -> np.ndarray:
        """A captured input as rows [tokens, K]."""
        x = x.T if self.trans_a else x
        return x.reshape(-1, x.shape[-1])


@dataclasses.dataclass
class ConvLayer:
    """Conv(x, W [Cout, Cin, kh, kw], B?) with group=1."""

    node: ir.Node
    x: ir.Value
    weight: ir.Value
    kernel: np.ndarray
    bias: ir.Value | None
    strides: list[int]
    pads: list[int]  # [top, left, bottom, right]
    dilations: list[int]
    auto_pad: str

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return self.kernel.shape  # type: ignore[return-value]

    @property
    def in_spatial(self) -> list[int | None]:
        dims = u.dims(self.x)
        return dims[2:] if dims is not None and len(dims) == 4 else [None, None]

    @property
    def out_spatial(self) -> list[int | None]:
        dims = u.dims(self.node.outputs[0])
        return dims[2:] if dims is not None and len(dims) == 4 else [None, None]


def _weight(node: ir.Node, index: int, ndim: int) -> tuple[ir.Value, np.ndarray] | str:
    """The constant weight at `index`, or why it is not one we may replace."""
    value = node.inputs[index] if index < len(node.inputs) else None
    if value is None:
        return "no weight"
    array = u.const_array(value)
    if array is None:
        return "dynamic weight"
    if array.ndim != ndim:
        return f"{array.ndim}-D weight"
    if value.dtype not in FLOAT_TYPES:
        return "non-float weight"
    if not u.only_user(value, node) or any(use.idx != index for use in value.uses()):
        return "weight shared with other nodes"
    return value, array


def _usable(node: ir.Node) -> str | None:
    if node.domain not in ("", "ai.onnx"):
        return "custom domain"
    if u.has_ref_attrs(node):
        return "function attribute references"
    if len(node.outputs) != 1:
        return "several outputs"
    return None


def match_linear(node: ir.Node, opset: int) -> LinearLayer | str:
    """`node` as a LinearLayer, or the reason it cannot be one."""
    reason = _usable(node)
    if reason is not None:
        return reason
    if node.op_type not in ("MatMul", "Gemm"):
        return "not MatMul/Gemm"
    found = _weight(node, 1, 2)
    if isinstance(found, str):
        return found
    weight, array = found
    x = node.inputs[0]
    if x is None:
        return "no input"
    w = np.asarray(array, dtype=np.float64)
    if node.op_type == "MatMul":
        x_dims = u.dims(x)
        if x_dims is not None and len(x_dims) < 1:
            return "scalar input"
        return LinearLayer(node, x, weight, w)
    trans_a = bool(u.attr_int(node, "transA", 0))
    if trans_a and opset < 11:
        return "Gemm transA needs opset >= 11"  # the first factor is a Gemm without C
    alpha = u.attr_float(node, "alpha", 1.0)
    beta = u.attr_float(node, "beta", 1.0)
    w_eff = alpha * (w.T if u.attr_int(node, "transB", 0) else w)
    bias = node.inputs[2] if len(node.inputs) > 2 else None
    return LinearLayer(node, x, weight, w_eff, bias=bias, beta=beta, trans_a=trans_a)


def match_conv(node: ir.Node) -> ConvLayer | str:
    """`node` as a ConvLayer (group=1, 2-D, kernel larger than 1x1), or the reason it is not one."""
    reason = _usable(node)
    if reason is not None:
        return reason
    if node.op_type != "Conv":
        return "not Conv"
    if u.attr_int(node, "group", 1) != 1:
        return "grouped conv"
    found = _weight(node, 1, 4)
    if isinstance(found, str):
        return found
    weight, array = found
    if array.shape[2] * array.shape[3] <= 1:
        return "1x1 kernel"
    x = node.inputs[0]
    if x is None:
        return "no input"
    auto_pad_attr = node.attributes.get("auto_pad")
    auto_pad = auto_pad_attr.as_string() if auto_pad_attr is not None else "NOTSET"
    return ConvLayer(
        node,
        x,
        weight,
        np.asarray(array, dtype=np.float64),
        bias=node.inputs[2] if len(node.inputs) > 2 else None,
        strides=u.attr_ints(node, "strides") or [1, 1],
        pads=u.attr_ints(node, "pads") or [0, 0, 0, 0],
        dilations=u.attr_ints(node, "dilations") or [1, 1],
        auto_pad=auto_pad or "NOTSET",
    )


def _candidates(model: ir.Model, op_types: tuple[str, ...], match, pass_name: str, skipped: Counter[str]) -> list:
    """`match(node)` for every main-graph node of `op_types`; the reasons for the rest (and the
    nodes of those types in subgraphs and functions, which are never decomposed) go to `skipped`."""
    for graph in u.all_graphs(model):
        if graph is not model.graph:
            nested = sum(1 for node in graph if u.is_onnx_op(node, *op_types))
            if nested:
                skipped["in a subgraph or function"] += nested
    found_layers = []
    for node in model.graph:
        if not u.is_onnx_op(node, *op_types):
            continue
        found = match(node)
        if isinstance(found, str):
            logger.debug("%s: %s '%s' skipped: %s", pass_name, node.op_type, node.name, found)
            skipped[found] += 1
        else:
            found_layers.append(found)
    return found_layers


def linears(model: ir.Model, op_types: tuple[str, ...], pass_name: str, skipped: Counter[str]) -> list[LinearLayer]:
    """The main graph's decomposable MatMul / Gemm layers (of `op_types`)."""
    opset = u.default_opset(model)
    return _candidates(model, op_types, lambda node: match_linear(node, opset), pass_name, skipped)


def convs(model: ir.Model, pass_name: str, skipped: Counter[str]) -> list[ConvLayer]:
    """The main graph's decomposable convs."""
    return _candidates(model, ("Conv",), match_conv, pass_name, skipped)


def conv_attributes(layer: ConvLayer, axes: tuple[int, ...] = (0, 1)) -> dict[str, object]:
    """Strides / pads / dilations / auto_pad of `layer` on the spatial `axes` (0: height, 1: width);
    the other axis gets stride 1, no padding, dilation 1 (a kernel of size 1 along it)."""
    strides = [layer.strides[a] if a in axes else 1 for a in (0, 1)]
    dilations = [layer.dilations[a] if a in axes else 1 for a in (0, 1)]
    attrs: dict[str, object] = {}
    if strides != [1, 1]:
        attrs["strides"] = strides
    if dilations != [1, 1]:
        attrs["dilations"] = dilations
    if layer.auto_pad != "NOTSET":
        attrs["auto_pad"] = layer.auto_pad  # a size-1 kernel with stride 1 pads nothing under SAME_*
    else:
        pads = [layer.pads[i] if i % 2 in axes else 0 for i in range(4)]
        if any(pads):
            attrs["pads"] = pads
    return attrs


def dims_of(value: ir.Value) -> list | None:
    """The value's dims as recorded (symbolic dims kept, for the shapes of new values)."""
    return None if value.shape is None else list(value.shape)


def conv_dims(layer: ConvLayer) -> tuple[object, list, list]:
    """(batch dim, [H_in, W_in], [H_out, W_out]) as recorded, None where unknown."""
    x, y = dims_of(layer.x), dims_of(layer.node.outputs[0])
    batch = x[0] if x is not None and len(x) == 4 else None
    return (batch, x[2:] if x is not None and len(x) == 4 else [None, None],
            y[2:] if y is not None and len(y) == 4 else [None, None])


def conv_sizes(layer: ConvLayer) -> tuple[int, tuple[int, int], tuple[int, int]]:
    """(batch, (H_in, W_in), (H_out, W_out)) for the cost formulas; unknown dims count as 1."""
    x_dims = u.dims(layer.x)
    batch = x_dims[0] if x_dims is not None and len(x_dims) == 4 and x_dims[0] is not None else 1
    h_in, w_in = (d or 1 for d in layer.in_spatial)
    h_out, w_out = (d or 1 for d in layer.out_spatial)
    return batch, (h_in, w_in), (h_out, w_out)

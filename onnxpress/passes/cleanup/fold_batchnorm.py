"""`fold-batchnorm`: fold an inference BatchNormalization into the Conv/ConvTranspose/Gemm before it.

onnxscript's `_fuse_batchnorm` rules do the same arithmetic but ignore `training_mode` (opset 14+)
and `spatial=0` (opset 7-8), crash on an omitted bias (`""` input), and only see initializers;
so this pass is our own.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import onnx_ir as ir

from onnxpress.passes.base import Pass, PassResult
from onnxpress.passes.cleanup import _util as u
from onnxpress.passes.registry import register_pass

logger = logging.getLogger(__name__)

_FLOATS = (ir.DataType.FLOAT, ir.DataType.DOUBLE, ir.DataType.FLOAT16)


def _bn_params(bn: ir.Node, opset: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(scale, shift) of an inference BatchNormalization: y = x * scale + shift per channel."""
    if opset < 7 or len(bn.inputs) != 5 or u.has_ref_attrs(bn):
        return None
    if u.attr_int(bn, "spatial", 1) != 1 or u.attr_int(bn, "training_mode", 0) != 0:
        return None
    if any(not u.unused(v) for v in bn.outputs[1:]):
        return None
    params = [u.const_array(v) for v in bn.inputs[1:]]
    if any(p is None or p.ndim != 1 or p.dtype.kind != "f" for p in params):
        return None
    gamma, beta, mean, var = (p.astype(np.float64) for p in params)  # type: ignore[union-attr]
    if not (gamma.shape == beta.shape == mean.shape == var.shape):
        return None
    scale = gamma / np.sqrt(var + u.attr_float(bn, "epsilon", 1e-5))
    return scale, beta - mean * scale


def _fold(producer: ir.Node, scale: np.ndarray, shift: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict[str, ir.Attr]] | None:
    """New (weight, bias, attributes) of `producer` with the per-channel affine map folded in."""
    w = u.const_array(producer.inputs[1])
    b_value = producer.inputs[2] if len(producer.inputs) > 2 else None
    b = u.const_array(b_value) if b_value is not None else None
    if w is None or (b_value is not None and b is None) or w.dtype not in (np.float16, np.float32, np.float64):
        return None
    attributes = dict(producer.attributes)
    wd = w.astype(np.float64)
    channels = len(scale)
    if producer.op_type == "Conv":
        if w.ndim < 3 or w.shape[0] != channels:
            return None
        new_w = wd * scale.reshape((channels,) + (1,) * (w.ndim - 1))
        bias = np.zeros(channels) if b is None else b.astype(np.float64)
        if bias.shape != (channels,):
            return None
    elif producer.op_type == "ConvTranspose":
        group = u.attr_int(producer, "group", 1)
        if w.ndim < 3 or group < 1 or w.shape[0] % group or w.shape[1] * group != channels:
            return None
        # weight (C_in, M/g, k...): output channel g*(M/g)+j scales column j of group g.
        grouped = wd.reshape((group, w.shape[0] // group) + w.shape[1:])
        s = scale.reshape((group, 1, w.shape[1]) + (1,) * (w.ndim - 2))
        new_w = (grouped * s).reshape(w.shape)
        bias = np.zeros(channels) if b is None else b.astype(np.float64)
        if bias.shape != (channels,):
            return None
    else:  # Gemm: y = alpha * A' B' + beta * C with channels along B' columns
        if w.ndim != 2:
            return None
        trans_b = u.attr_int(producer, "transB", 0)
        if (w.shape[0] if trans_b else w.shape[1]) != channels:
            return None
        new_w = wd * (scale[:, None] if trans_b else scale[None, :])
        beta = u.attr_float(producer, "beta", 1.0)
        bias = np.zeros(channels) if b is None else beta * b.astype(np.float64)
        attributes.pop("beta", None)
        try:
            np.broadcast_shapes(bias.shape, (1, channels))
        except ValueError:
            return None
    return u.same_dtype(new_w, w), u.same_dtype(bias * scale + shift, w), attributes


@register_pass
class FoldBatchNormPass(Pass):
    """Fold BatchNormalization into the Conv, ConvTranspose or Gemm that feeds it.

    Applies when the BatchNormalization is in inference form (opset >= 7, `spatial` 1,
    `training_mode` 0, its optional outputs unused) with constant scale/bias/mean/var, and the
    producer's output feeds only this BatchNormalization, with a constant float weight (and
    constant bias, if any). Conv weights scale along axis 0, ConvTranspose along axis 1 per group,
    Gemm along the columns of B' (axis 1, or axis 0 with transB); Gemm's `beta` goes into the new
    bias. New weights are new initializers; the old ones are left for `dce`.

    Does not apply to a BatchNormalization after anything else (it stays), to producers with other
    users (both outputs would be needed), in model-local functions (they cannot hold initializers),
    or to custom-domain nodes.
    """

    name = "fold-batchnorm"

    def run(self, model: ir.Model, am: Any) -> PassResult:
        opset = u.default_opset(model)
        names = u.NameScope(model)
        folded = 0
        graphs = [model.graph, *model.graph.subgraphs()]
        for graph in graphs:
            for bn in list(graph):
                if not u.is_onnx_op(bn, "BatchNormalization") or bn.inputs[0] is None:
                    continue
                x = bn.inputs[0]
                producer = x.producer()
                if producer is None or producer.graph is not graph:
                    continue
                if not u.is_onnx_op(producer, "Conv", "ConvTranspose", "Gemm") or u.has_ref_attrs(producer):
                    continue
                if not u.only_user(x, bn) or (x.dtype is not None and x.dtype not in _FLOATS):
                    continue
                params = _bn_params(bn, opset)
                if params is None:
                    logger.debug("BatchNormalization %s is not foldable", bn.name)
                    continue
                fused = _fold(producer, *params)
                if fused is None:
                    logger.debug("cannot fold %s into %s %s", bn.name, producer.op_type, producer.name)
                    continue
                new_w, new_b, attributes = fused
                base = producer.inputs[1].name or "weight"  # type: ignore[union-attr]
                w_value = u.new_initializer(graph, names, f"{base}_bnfold", new_w)
                b_value = u.new_initializer(graph, names, f"{base}_bnfold_bias", new_b)
                u.replace_node(
                    [producer, bn], producer.op_type, [producer.inputs[0], w_value, b_value], attributes, bn.outputs[0]
                )
                folded += 1
        if folded:
            logger.info("fold-batchnorm folded %d BatchNormalization node(s)", folded)
        return PassResult(model, folded > 0, {"folded": folded})
